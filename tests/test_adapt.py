"""``seamline adapt`` (#22): local labels in (GeoPackage, GeoJSON, OSM), places in any CRS, a resumable fine-tune
with before/after figures on held-out places, and one-line errors for labels that cannot train anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from helpers import shared
from shapely.geometry import box

from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.training.labels import read_labels
from pipeline.training.places import load_places_dataset, place_of

Z19 = 76.43702828517625
REPO = Path(__file__).resolve().parents[1]


def banepa_chips(xs=(386690, 386691), ys=(220244, 220245)) -> list[str]:
    chips = shared("aerial", "banepa_buildings", "chips")
    return [str(chips / f"OAM-{x}-{y}-19.tif") for x in xs for y in ys]


def banepa_labels() -> Path:
    return shared("aerial", "banepa_buildings", "labels.gpkg")


def test_chips_in_degrees_become_places_in_ground_metres():
    """Banepa's chips are JPEG in EPSG:4326 with an .aux.xml sidecar (1.34e-6 x 1.19e-6 deg per pixel): each
    becomes one place, resampled from its ground pixel size (0.132 m) to 0.15 m, with its outlines on it; a
    Kampala chip in Web Mercator mixes in."""
    kampala = str(shared("aerial", "kampala_buildings", "chips", "OAM-309606-261636-19.tif"))
    labels = [str(banepa_labels()), str(shared("aerial", "kampala_buildings", "labels.gpkg"))]
    samples = load_places_dataset(banepa_chips(ys=(220245,)) + [kampala], labels, 0.15, Z19)
    by_name = {s.name: s for s in samples}
    assert set(by_name) == {"p124546_41898@0.132m", "p124547_41898@0.132m", "p47462_507@0.2986m"}
    b = by_name["p124546_41898@0.132m"]
    assert b.image.shape == (3, 449, 452)  # 512 px of 0.1318 x 0.1323 m -> 0.15 m
    assert str(b.crs) == "EPSG:4326" and b.transform.a == pytest.approx(1.341e-6 * 512 / 452, rel=1e-3)
    assert len(np.unique(b.labels)) - 1 >= 30  # this chip holds ~33 OSM buildings
    fg = b.labels > 0
    assert 0.15 < fg.mean() < 0.8


def test_osm_extracts_are_read_through_gdal(tmp_path):
    """The same Banepa outlines as OSM XML (ways tagged building=yes, one tagged building=no, one highway) and a
    real .osm.pbf (pyogrio's fixture: two buildings among other ways): buildings only, in EPSG:4326."""
    gdf = gpd.read_file(banepa_labels()).to_crs("EPSG:4326").head(25)
    nodes, ways, nid = [], [], 1
    for k, g in enumerate(list(gdf.geometry) + [box(85.519, 27.631, 85.5191, 27.6311), box(85.52, 27.63, 85.5201, 27.6301)]):
        poly = g.geoms[0] if g.geom_type == "MultiPolygon" else g
        refs = []
        for x, y in list(poly.exterior.coords)[:-1]:
            nodes.append(f'<node id="{nid}" lat="{y:.8f}" lon="{x:.8f}"/>')
            refs.append(nid)
            nid += 1
        tag = "building\" v=\"yes" if k < 25 else ("building\" v=\"no" if k == 25 else "highway\" v=\"service")
        ways.append(f'<way id="{1000 + k}">' + "".join(f'<nd ref="{r}"/>' for r in refs + refs[:1])
                    + f'<tag k="{tag}"/></way>')
    osm = tmp_path / "banepa.osm"
    osm.write_text('<?xml version="1.0"?><osm version="0.6">' + "".join(nodes + ways) + "</osm>")
    got = read_labels([str(osm)])
    assert len(got) == 25 and got.crs.to_epsg() == 4326
    assert got.union_all().intersection(gdf.union_all()).area == pytest.approx(gdf.union_all().area, rel=1e-3)
    pbf = Path(pyogrio.__file__).parent / "tests" / "fixtures" / "sample.osm.pbf"
    assert len(read_labels([str(pbf)])) == 2


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("case", ["elsewhere", "wrong_crs", "no_polygons", "no_crs", "missing", "holdout", "nuclei_model"])
def test_bad_labels_get_one_line(case, tmp_path, capsys):
    """Labels that cannot train a local model: one line naming the file, what was found, and the fix; exit 2;
    nothing written under --out."""
    labels = tmp_path / "labels.geojson"
    extra: list[str] = []
    gdf = gpd.read_file(banepa_labels()).to_crs("EPSG:4326").head(40)
    if case == "elsewhere":  # Kampala's outlines for Banepa's imagery
        labels = shared("aerial", "kampala_buildings", "labels.gpkg")
    elif case == "wrong_crs":  # lon/lat numbers declared as Web Mercator metres: they land near (0, 0)
        gpd.GeoDataFrame(geometry=list(gdf.geometry), crs="EPSG:3857").to_file(labels)
    elif case == "no_polygons":
        gpd.GeoDataFrame(geometry=list(gdf.geometry.representative_point()), crs="EPSG:4326").to_file(labels)
    elif case == "no_crs":  # a GeoPackage layer without a spatial reference (GeoJSON is lon/lat by definition)
        labels = tmp_path / "labels.gpkg"
        with pytest.warns(UserWarning, match="crs"):
            pyogrio.write_dataframe(gpd.GeoDataFrame(geometry=list(gdf.geometry)), labels, driver="GPKG")
    elif case == "missing":
        labels = tmp_path / "nothing.gpkg"
    elif case == "holdout":
        labels, extra = banepa_labels(), ["--holdout", "1.5"]
    elif case == "nuclei_model":
        labels, extra = banepa_labels(), ["--model", "default"]
    out = tmp_path / "out"
    code, err = _run(["adapt", *banepa_chips(), "--labels", str(labels), "--out", str(out), *extra], capsys)
    assert code == 2 and err.count("\n") == 0 and err.startswith("seamline: error: adapt"), err
    expected = {"elsewhere": "do not overlap", "wrong_crs": "do not overlap", "no_polygons": "no building polygon",
                "no_crs": "no CRS", "missing": "not found", "holdout": "--holdout 1.5", "nuclei_model": "no ground pixel size"}
    assert expected[case] in err, err
    assert not (out / "out.safetensors").exists()


def test_adapt_cli_exit_code(tmp_path):
    """The same through the installed entry point: exit code 2, one line, no traceback."""
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "adapt", "--out", str(tmp_path / "o"),
                          "--from-review", str(tmp_path / "none")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"seamline: error: adapt --from-review {tmp_path / 'none'}: no review.json "
                                               "there; pass the folder written by seamline review"]


@pytest.mark.slow
def test_adapt_end_to_end_and_resume(tmp_path, capsys):
    """Four Banepa chips: one place held out, three trained on for one epoch, then the same command with two
    epochs continues from the saved state instead of starting over. The card holds both figures."""
    out = tmp_path / "local"
    args = ["adapt", *banepa_chips(), "--labels", str(banepa_labels()), "--out", str(out), "--holdout", "0.25",
            "--minutes", "60", "--threads", "2"]
    code, err = _run([*args, "--epochs", "1"], capsys)
    assert code == 0, err
    assert "before: held-out F1" in err and "after:  held-out F1" in err and "epoch 1/1" in err
    code, err = _run([*args, "--epochs", "2"], capsys)
    assert code == 0, err
    assert "resuming after epoch 1" in err and "epoch 2/2" in err and "epoch 1/2" not in err
    md = json.loads((out / "local.json").read_text())
    card = md["adapt"]
    assert card["epochs"] == 2 and len(card["held_out_images"]) == 1 and len(card["train_images"]) == 3
    assert {place_of(n) for n in card["held_out_images"]}.isdisjoint({place_of(n) for n in card["train_images"]})
    for when in ("before", "after"):
        r = card[when]["held_out"]
        assert r["tp"] + r["fn"] >= 30 and 0 <= r["f1"] <= 1  # the held-out place's buildings were all counted
    assert md["pixel_size"] == [0.15, "m"] and md["adapt"]["base"] == "buildings_unet_mbv2"
    text = (out / "CARD.md").read_text()
    assert "© OpenStreetMap contributors" in text and f"{card['after']['held_out']['f1']:.3f}" in text
    # whether the local model beats its base on the hold-out is said, not left to the reader
    better = card["better_than_base"]
    assert better == (card["after"]["held_out"]["f1"] > card["before"]["held_out"]["f1"])
    assert ("keep using `buildings_unet_mbv2`" in text) != better and ("not better than" in err) != better
    # another request in the same folder is refused rather than continued on other data
    code, err = _run([*args[:-4], "--holdout", "0.5", "--epochs", "2"], capsys)
    assert code == 2 and "holds an adapt run with other settings (holdout)" in err, err


def test_bad_input_raises_input_error_in_library():
    """The library raises the same error the CLI prints (callers may catch InputError or ValueError)."""
    from pipeline.training.adapt import labelled_places

    with pytest.raises(InputError, match="do not overlap"):
        labelled_places(banepa_chips(), [str(shared("aerial", "kampala_buildings", "labels.gpkg"))], 0.15, Z19)
