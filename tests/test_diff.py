"""``seamline diff`` end to end on real runs: two dates of a 2000 × 2000 UTM scene at 0.5 m with known
changes, each segmented by the real ``seamline segment --model classical`` CLI; then the diff through its CLI,
its files opened as a user would, the out-of-core partition against one strip, other CRSs, partial overlap,
URLs on an S3 server, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.synthetic_change import write_object_table, write_two_dates

pytestmark = pytest.mark.slow  # runs of two dates and the diff driver end to end

ROOT = Path(__file__).resolve().parents[1]
PX = 0.5  # metres per pixel of the scenes


def seamline(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=timeout)


def segment(image: Path, out: Path) -> Path:
    r = seamline("segment", image, "--out", out, "--model", "classical")
    assert r.returncode == 0, r.stderr[-3000:]
    return out / f"{image.name.removesuffix('.tif')}.parquet"


@pytest.fixture(scope="module")
def dates(tmp_path_factory):
    """Date 1 and date 2 (15 objects gone, 15 new, 15 grown ×1.5 in radius; date 2 shifted by 1.5 px in x,
    25 % brighter, with other noise), segmented with the default settings and the classical model."""
    d = tmp_path_factory.mktemp("dates")
    a, b, truth = write_two_dates(d, 2000, 2000, seed=0, shift=(0.0, 1.5), gain=1.25, noise=(0.02, 0.03))
    return SimpleNamespace(root=d, truth=truth, old=segment(a, d / "out"), new=segment(b, d / "out"))


@pytest.fixture(scope="module")
def goal(dates, tmp_path_factory):
    out = tmp_path_factory.mktemp("diff")
    r = seamline("diff", dates.old, dates.new, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return SimpleNamespace(out=out, stdout=r.stdout, summary=json.loads((out / "date2.changes.json").read_text()))


def _labels(path: Path):
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1), ~ds.transform


def judge(dates, parquet: Path) -> dict:
    """Each changed row against the truth: the blob under the row's geometry (date-1 labels for ``gone``,
    date-2 labels otherwise) must be one that changed that way; returns the counts and the false calls."""
    import geopandas as gpd
    import shapely

    t = dates.truth
    lab = {1: _labels(dates.root / "date1_labels.tif"), 2: _labels(dates.root / "date2_labels.tif")}
    right = {"gone": set(t.gone), "new": set(t.added), "grown": {n for _, n in t.grown}}
    g = gpd.read_parquet(parquet)
    false = []
    for row in g[~g["change"].isin(["same", "edge"])].itertuples():
        a, inv = lab[1 if row.change == "gone" else 2]
        p = shapely.point_on_surface(row.geometry)
        c, r = inv * (p.x, p.y)
        blob = int(a[int(r), int(c)]) - 1
        if blob not in right.get(row.change, set()):
            false.append((row.change, row.old_id, row.new_id, blob))
    return {"counts": g["change"].value_counts().to_dict(), "false": false}


def test_goal_counts_within_one_of_the_truth_and_few_false_changes(dates, goal):
    s = goal.summary
    c = s["counts"]
    t = dates.truth
    verdict = judge(dates, goal.out / "date2.changes.parquet")
    print(f"\ntruth gone/new/grown {len(t.gone)}/{len(t.added)}/{len(t.grown)}; diff {c}; shift {s['shift']}; "
          f"unchanged called changed: {len(verdict['false'])} {verdict['false']}")
    assert abs(c["new"] - len(t.added)) <= 1
    assert abs(c["gone"] - len(t.gone)) <= 1
    assert abs(c["grown"] - len(t.grown)) <= 1
    assert len(verdict["false"]) <= 5
    # the 1.5 px shift in x was found (y down in the image is south on the map)
    assert s["shift"]["estimated"] and abs(s["shift"]["dx_px"] - 1.5) < 0.15 and abs(s["shift"]["dy_px"]) < 0.15
    assert "15 new, 15 gone" in goal.stdout or f"{c['new']} new" in goal.stdout


def test_outputs_are_complete_and_open_in_clients(dates, goal):
    import geopandas as gpd
    import pyarrow.parquet as pq

    s = goal.summary
    names = {p.name for p in goal.out.iterdir()}
    assert names == {"date2.changes.parquet", "date2.changes.gpkg", "date2.changes.json", "date2.changes.html"}
    pf = pq.ParquetFile(goal.out / "date2.changes.parquet")
    geo = json.loads(pf.schema_arrow.metadata[b"geo"])
    assert geo["version"] == "1.1.0" and "covering" in geo["columns"]["geometry"]
    assert geo["columns"]["geometry"]["crs"]["id"]["code"] == 32633
    rows = gpd.read_parquet(goal.out / "date2.changes.parquet")
    # one row per object of either date (a matched pair shares its row)
    old_ids = rows["old_id"].dropna().astype(int)
    new_ids = rows["new_id"].dropna().astype(int)
    assert old_ids.is_unique and new_ids.is_unique
    assert len(old_ids) == s["old"]["compared"] == s["old"]["objects"] - s["old"]["outside_footprint"]
    assert len(new_ids) == s["new"]["compared"]
    assert sum(s["counts"].values()) == len(rows)
    gone = rows[rows["change"] == "gone"]
    assert gone["new_id"].isna().all() and (gone["area_new"].isna()).all()
    grown = rows[rows["change"] == "grown"]
    assert (grown["area_ratio"] >= 1.3).all() and grown["iou"].between(0, 1).all()
    gk = gpd.read_file(goal.out / "date2.changes.gpkg", layer="changes")
    assert len(gk) == len(rows) and gk.crs.to_epsg() == 32633
    con = sqlite3.connect(goal.out / "date2.changes.gpkg")
    qml = con.execute("SELECT styleQML FROM layer_styles WHERE f_table_name = 'changes' AND useAsDefault").fetchone()[0]
    con.close()
    assert 'attr="change"' in qml and 'value="grown"' in qml
    # the JSON: counts and areas per change and class, the shift, the footprint; and it lists every file
    assert set(s["counts"]) >= {"new", "gone", "grown", "shrunk", "same"}
    assert s["area"]["grown"]["new"] > s["area"]["grown"]["old"] > 0
    assert s["counts_per_class"]["object"]["gone"] == s["counts"]["gone"]
    np.testing.assert_allclose(s["footprint"]["bounds"], [500000, 4999000, 501000 - 0.75, 5000000], atol=0.1)
    assert set(s["files"]) == {"date2.changes.parquet", "date2.changes.gpkg", "date2.changes.html"}
    page = (goal.out / "date2.changes.html").read_text()
    assert "<script" not in page and "http://" not in page.replace("http-equiv", "")
    assert page.count('alt="before"') == page.count('alt="after"') == 8


def test_partitioned_run_equals_one_strip(dates, goal, tmp_path):
    """Strips of ~1000 objects (a dozen, each read from the row groups its bbox statistics select) give the
    very rows of the whole-file comparison."""
    import geopandas as gpd

    from pipeline.diff import diff_runs

    s = diff_runs(str(dates.old), str(dates.new), str(tmp_path), strip_objects=1000, report=False)
    assert s["partition"]["strips"] >= 8
    key = lambda g: sorted(zip(g["old_id"].fillna(-1).astype(int), g["new_id"].fillna(-1).astype(int),  # noqa: E731
                               g["change"], g["relation"].fillna("")))
    a = gpd.read_parquet(goal.out / "date2.changes.parquet")
    b = gpd.read_parquet(tmp_path / "date2.changes.parquet")
    assert key(a) == key(b)


def _reproject(src: Path, dest_dir: Path, crs: str) -> Path:
    """The run's GeoParquet in another CRS (GeoPandas, GeoParquet 1.1 with a bbox column), its summary beside it."""
    import geopandas as gpd

    dest_dir.mkdir(parents=True, exist_ok=True)
    g = gpd.read_parquet(src)  # GeoPandas drops the bbox covering column on reading
    g = g.drop(columns=[c for c in ("bbox",) if c in g.columns]).to_crs(crs)
    out = dest_dir / src.name
    g.to_parquet(out, write_covering_bbox=True, schema_version="1.1.0", row_group_size=2000)
    shutil.copy(src.with_suffix(".json"), dest_dir / src.with_suffix(".json").name)
    return out


def test_other_crs_gives_the_same_answer(dates, goal, tmp_path):
    from pipeline.diff import diff_runs

    old84 = _reproject(dates.old, tmp_path / "old84", "EPSG:4326")
    new84 = _reproject(dates.new, tmp_path / "new84", "EPSG:4326")
    want = goal.summary["counts"]
    s = diff_runs(str(old84), str(dates.new), str(tmp_path / "a"), report=False)
    assert s["crs"]["id"]["code"] == 32633 and s["counts"] == want
    s = diff_runs(str(old84), str(new84), str(tmp_path / "b"), report=False)  # both geographic: a UTM zone
    assert s["crs_name"] == "WGS 84 / UTM zone 33N" and s["counts"] == want
    assert abs(s["shift"]["dx"] - goal.summary["shift"]["dx"]) < 0.05


def test_partial_overlap_reports_the_common_footprint_and_spares_cut_objects(dates, tmp_path):
    """Date 2 cropped to its eastern 1300 columns: the common footprint starts there; objects cut by that
    edge are never new or gone; the changes inside are still found."""
    import geopandas as gpd
    import rasterio
    from rasterio.windows import Window

    col0 = 700
    src = dates.root / "date2.tif"
    east = tmp_path / "date2_east.tif"
    with rasterio.open(src) as ds:
        prof = ds.profile | {"width": 2000 - col0, "transform": ds.window_transform(Window(col0, 0, 2000 - col0, 2000))}
        with rasterio.open(east, "w", **prof) as out:
            out.write(ds.read(window=Window(col0, 0, 2000 - col0, 2000)))
    new = segment(east, tmp_path / "out")
    r = seamline("diff", dates.old, new, "--out", tmp_path / "diff", "--no-report")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "diff" / "date2_east.changes.json").read_text())
    x0 = 500000 + col0 * PX - 0.75  # date 2's west edge, moved back by the shift
    np.testing.assert_allclose(s["footprint"]["bounds"], [x0, 4999000, 501000 - 0.75, 5000000], atol=0.1)
    assert s["old"]["outside_footprint"] > 1000 and s["new"]["outside_footprint"] == 0
    rows = gpd.read_parquet(tmp_path / "diff" / "date2_east.changes.parquet")
    called = rows[rows["change"].isin(["new", "gone"])]
    near_edge = called.geometry.bounds["minx"] < x0 + 3
    assert not near_edge.any(), called[near_edge]
    assert (rows["change"] == "edge").sum() >= 1
    # the truth inside the overlap (clear of the edge)
    t = dates.truth
    inside = lambda b: b.cx - max(b.rx, b.ry) > col0 + 4  # noqa: E731
    want = {"gone": sum(inside(t.old[i]) for i in t.gone), "new": sum(inside(t.new[j]) for j in t.added),
            "grown": sum(inside(t.new[j]) for _, j in t.grown)}
    for k, v in want.items():
        assert abs(s["counts"][k] - v) <= 1, (k, s["counts"], want)


@pytest.mark.slow  # an S3 server
def test_s3_urls_in_and_out(dates, goal, tmp_path):
    """Both runs on an S3 server (moto, a real HTTP endpoint), the changes published back to it."""
    from servers import make_bucket, s3_client, s3_environment

    with s3_environment(tmp_path) as endpoint:
        bucket = make_bucket(endpoint)
        s3 = s3_client(endpoint)
        for p in (dates.old, dates.new):
            for f in (p, p.with_suffix(".json")):
                s3.upload_file(str(f), bucket, f"runs/{f.name}")
        env = {k: os.environ[k] for k in os.environ if k.startswith("AWS_")}
        r = seamline("diff", f"s3://{bucket}/runs/date1.parquet", f"s3://{bucket}/runs/date2.parquet",
                     "--out", f"s3://{bucket}/changes", "--no-report", env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="changes/")["Contents"]}
        assert keys == {"changes/date2.changes.parquet", "changes/date2.changes.gpkg", "changes/date2.changes.json"}
        s = json.loads(s3.get_object(Bucket=bucket, Key="changes/date2.changes.json")["Body"].read())
    assert s["counts"] == goal.summary["counts"]
    assert s["old"]["footprint_source"] == "summary"


def test_a_component_longer_than_the_margin_is_read_again_with_a_wider_one(tmp_path):
    """A long object split in five on the second date spans every strip: the partitioned driver must widen its
    margin until it sees the whole group, and give what one strip gives."""
    import shapely

    from pipeline.diff import diff_runs

    filler = [shapely.box(x, y, x + 3, y + 3) for x in range(20, 400, 10) for y in range(0, 400, 10)]
    long_old = shapely.box(5, 0, 9, 400)
    pieces = [shapely.box(5, y + 0.5, 9, y + 79.5) for y in range(0, 400, 80)]  # each IoU 0.2 with the whole
    write_object_table(tmp_path / "old.parquet", [*filler, long_old], None, tile=64, row_group=500)
    write_object_table(tmp_path / "new.parquet", [*filler, *pieces], None, tile=64, row_group=500)
    one = diff_runs(str(tmp_path / "old.parquet"), str(tmp_path / "new.parquet"), str(tmp_path / "one"), report=False)
    many = diff_runs(str(tmp_path / "old.parquet"), str(tmp_path / "new.parquet"), str(tmp_path / "many"),
                     strip_objects=1000, report=False)
    assert one["partition"]["strips"] == 1 and many["partition"]["strips"] >= 3 and many["partition"]["retries"] >= 1
    assert many["counts"] == one["counts"] and one["counts"]["same"] == len(filler) + 5
    assert one["relations"]["split"] == 5
    # images without georeferencing: compared in pixels, the GeoPackage on the Undefined Cartesian SRS
    assert one["crs"] is None and one["footprint"]["area_unit"] == "px2"
    con = sqlite3.connect(tmp_path / "one" / "new.changes.gpkg")
    assert con.execute("SELECT srs_id FROM gpkg_contents WHERE table_name = 'changes'").fetchone()[0] == -1
    con.close()


@pytest.fixture(scope="module")
def odd_inputs(dates, tmp_path_factory):
    import shapely

    d = tmp_path_factory.mktemp("odd")
    boxes = [shapely.box(x, y, x + 4, y + 4) for x in range(0, 400, 20) for y in range(0, 400, 20)]
    write_object_table(d / "pixels.parquet", boxes, None)
    far = [shapely.affinity.translate(b, 700000, 5000000) for b in boxes]
    write_object_table(d / "far.parquet", far, "EPSG:32633")
    (d / "not.parquet").write_text("not a parquet file")
    return d


@pytest.mark.parametrize("which, extra, match", [
    ("missing", [], r"nope\.parquet: no such file"),
    ("text", [], r"not\.parquet: not a parquet file"),
    ("summary", [], r"summary\.parquet: not a Seamline GeoParquet \(no 'geo' metadata\)"),
    ("pixels", [], r"pixels\.parquet is in image pixels .* cannot be reconciled"),
    ("far", [], r"no common footprint: .*far\.parquet covers"),
    ("same", [], r"OLD and NEW are the same file"),
    ("ok", ["--area-change", "0.8"], r"--area-change 0\.8: must be a ratio above 1"),
    ("ok", ["--min-iou", "0"], r"--min-iou 0\.0: must be in \(0, 1\]"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(dates, odd_inputs, tmp_path, which, extra, match):
    import re

    old = {"missing": dates.root / "out" / "nope.parquet", "text": odd_inputs / "not.parquet",
           "summary": dates.root / "out" / "summary.parquet", "pixels": odd_inputs / "pixels.parquet",
           "far": odd_inputs / "far.parquet", "same": dates.new, "ok": dates.old}[which]
    out = tmp_path / "out"
    r = seamline("diff", old, dates.new, "--out", out, *extra)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("seamline: error: ") and re.search(match, lines[0]), lines[0]
    assert not out.exists() or not any(out.iterdir())


QGIS_SCRIPT = r"""
import json, sys
from qgis.core import QgsApplication, QgsVectorLayer

app = QgsApplication([], False)
app.initQgis()
lyr = QgsVectorLayer(sys.argv[1] + '|layername=changes', 'c', 'ogr')
r = lyr.renderer()
rec = {'valid': lyr.isValid(), 'count': lyr.featureCount(), 'authid': lyr.crs().authid(), 'renderer': r.type()}
if r.type() == 'categorizedSymbol':
    rec['attr'] = r.classAttribute()
    rec['categories'] = {c.value(): c.symbol().symbolLayer(0).strokeColor().name() for c in r.categories()}
print('QGIS-RESULT ' + json.dumps(rec), flush=True)
del r, lyr
app.exitQgis()
"""


@pytest.mark.slow  # QGIS
def test_qgis_opens_the_changes_styled_by_change(goal, tmp_path):
    from pipeline.io.palette import CHANGE_COLOURS, hex_colour

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    (tmp_path / "xdg").mkdir(mode=0o700)
    env.update(QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(tmp_path / "xdg"), PYTHONNOUSERSITE="1")
    if not Path("/usr/bin/python3").exists():
        pytest.fail("/usr/bin/python3 not found: install python3-qgis (run .ci/install-clients.sh)")
    r = subprocess.run(["/usr/bin/python3", "-c", QGIS_SCRIPT, str(goal.out / "date2.changes.gpkg")], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("QGIS-RESULT ")]
    assert r.returncode == 0 and lines, f"QGIS failed (install python3-qgis qgis-providers):\n{r.stderr[-3000:]}"
    rec = json.loads(lines[-1][len("QGIS-RESULT "):])
    assert rec["valid"] and rec["authid"] == "EPSG:32633"
    assert rec["count"] == sum(goal.summary["counts"].values())
    assert rec["renderer"] == "categorizedSymbol" and rec["attr"] == "change"
    assert rec["categories"] == {k: hex_colour(v) for k, v in CHANGE_COLOURS.items()}


def test_watch_diffs_a_new_version_against_the_last_done_one(dates, tmp_path):
    """`seamline watch SRC --out DEST --once --diff-previous`: a scene done once, then a new version of it (the
    second date under the same name): the second round publishes <stem>.changes.* and puts the counts in the
    ledger; the first version's objects were kept for it although the new run overwrote <stem>.parquet."""
    import shutil

    from pipeline.watch import read_ledger

    src, dest = tmp_path / "incoming", tmp_path / "results"
    src.mkdir()
    shutil.copy(dates.root / "date1.tif", src / "place.tif")
    args = ("watch", src, "--out", dest, "--once", "--model", "classical", "--diff-previous")
    r1 = seamline(*args)
    assert r1.returncode == 0 and "1 processed" in r1.stdout, r1.stderr[-3000:]
    assert not (dest / "place.changes.json").exists()  # nothing to compare with yet
    shutil.copy(dates.root / "date2.tif", src / "place.tif")  # a new version of the scene
    r2 = seamline(*args)
    assert r2.returncode == 0 and "1 processed" in r2.stdout, r2.stderr[-3000:]
    s = json.loads((dest / "place.changes.json").read_text())
    t = dates.truth
    assert abs(s["counts"]["new"] - len(t.added)) <= 1 and abs(s["counts"]["gone"] - len(t.gone)) <= 1
    led = read_ledger(str(dest)).sort_values("started_at")
    last = led.iloc[-1]
    assert json.loads(last.changes)["grown"] == s["counts"]["grown"] and last.changed == s["changed"]
    assert last.diff_against.endswith(led.iloc[0].version) and led.iloc[0].isna()["changes"]
    r3 = seamline(*args)  # nothing new: nothing processed, nothing diffed again
    assert "0 processed" in r3.stdout and "1 already done" in r3.stdout, r3.stdout
