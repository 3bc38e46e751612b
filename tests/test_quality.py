"""The quality verdict (issue #21): each shipped checkpoint records its training domain, every run is judged
against it (``quality`` in the summary, a banner in the report, a column in the batch table and the watch
ledger, ``doubtful`` per object), and ``--fail-on unreliable`` refuses to publish.

The rule's pure functions are tested on the shipped records and on real images' statistics; the end-to-end
runs (``slow``) use real files: in-domain runs are ``ok``, crossed runs (a model on another field's image) are
not. More in-domain runs: tests/test_real_slide.py (the DAPI NDPI), tests/test_aerial_models.py (Kampala held-out
place, OSBS_029 held-out half).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import shared

from pipeline.cli import build_parser, main
from pipeline.cli.options import config_from_args
from pipeline.config import QualityParams, SegmentConfig
from pipeline.errors import ConfigError, QualityGateError
from pipeline.io.batch import batch_row, failed_row
from pipeline.models.checkpoint import load_metadata
from pipeline.models.normalize import apply_normalization, percentiles, to_model_channels
from pipeline.models.registry import resolve_model_spec
from pipeline.report.html import quality_banner
from pipeline.stages.domain import detect, image_domain
from pipeline.stages.quality import assess, doubtful_objects, object_limits, quality_line, refuses
from pipeline.training.samples import read_image

MODELS = {"default": "fluorescence", "buildings": "aerial", "trees": "aerial"}


def _md(name: str) -> dict:
    return load_metadata(resolve_model_spec(name))


def _dsb(modality: str) -> Path:
    """The first DSB2018 image of a manifest modality among the nuclei model's validation images (never trained on)."""
    val = set(_md("default")["training"]["val_names"])
    rows = csv.DictReader(shared("dsb2018", "manifest.csv").open())
    first = sorted(r["id"] for r in rows if r["modality"] == modality and r["id"] in val)[0]
    return shared("dsb2018", "images", f"{first}.png")


def _read(path: Path) -> np.ndarray:
    """(3, h, w) raw values; through GDAL for the Banepa chips (JPEG files named .tif, georeferenced by a sidecar)."""
    import rasterio

    if path.suffix == ".tif":
        with rasterio.open(path) as ds:
            return ds.read()[:3]
    return read_image(path)[:3]


def _domain(path: Path, georeferenced: bool = False) -> dict:
    """An image's domain as a run measures it: raw values for the modality, normalised model channels for colour."""
    img = _read(path)
    norm = to_model_channels(apply_normalization(img, percentiles(img)), 3)
    return image_domain(detect(img, georeferenced), norm)


def _objects(md: dict, n: int = 200, area_scale: float = 1.0, score: float | None = None) -> dict:
    """Objects with the areas and scores the model's validation predictions had (drawn from its quantiles)."""
    v = md["domain"]["validation"]
    rng = np.random.default_rng(0)
    a = np.interp(rng.uniform(25, 75, n), [25, 50, 75], [v["area_px"]["p25"], v["area_px"]["p50"], v["area_px"]["p75"]])
    s = np.full(n, v["score"]["p50"] if score is None else score)
    return {"area_px": (a * area_scale).astype(np.int64), "score": s, "doubtful": np.zeros(n, bool)}


# ------------------------------------------------------------------------------------------- the records
@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_checkpoints_record_their_training_domain(name):
    md = _md(name)
    rec = md["domain"]
    assert rec["modality"] == MODELS[name]
    assert rec["pixel"][1] == ("um" if name == "default" else "m")
    assert abs(sum(m["share"] for m in rec["modalities"].values()) - 1) < 0.01
    assert rec["objects"]["objects"] > 100 and rec["objects"]["area_px"]["p50"] > 0
    # the record's own predictions on the validation images reproduce the checkpoint's validation F1
    assert rec["validation"]["f1"] == pytest.approx(md["validation"]["all"]["f1"], abs=0.01)
    assert 0 < rec["validation"]["score"]["p01"] <= rec["validation"]["score"]["p05"] < 1
    assert len(json.dumps(rec)) < 12_000  # quantiles, not images


def test_image_modality_and_colour_of_real_images():
    fluor = _domain(_dsb("fluor"))
    assert fluor["modality"] == "fluorescence" and fluor["colour"]["C_p50"] == 0
    he = _domain(sorted(shared("he_consep", "images", "test").glob("*.jpg"))[0])
    assert he["modality"] == "brightfield-he" and he["colour"]["a_p50"] > 5  # pink
    aerial = _domain(shared("aerial", "banepa_buildings", "chips", "OAM-386690-220241-19.tif"), georeferenced=True)
    assert aerial["modality"] == "aerial"
    # a dark aerial chip looks like fluorescence to the background test, but it has colour: not fluorescence
    chips = sorted(shared("aerial", "banepa_buildings", "chips").glob("*.tif"))
    dark = [c for c in chips if detect(_read(c)).modality == "fluorescence"]
    assert dark and all(_domain(c)["modality"] == "unknown" for c in dark)


# ------------------------------------------------------------------------------------------- the rule
def test_in_domain_statistics_are_ok_and_another_field_is_unreliable():
    md = _md("default")
    fluor = _domain(_dsb("fluor"))
    q = assess(md, fluor, _objects(md), 1e6, None)
    assert q["verdict"] == "ok" and q["reasons"] == [] and q["signals"]["modality_share"] > 0.5
    aerial = _domain(shared("aerial", "banepa_buildings", "chips", "OAM-386690-220241-19.tif"), georeferenced=True)
    q = assess(md, aerial, _objects(md), 1e6, "m")
    assert q["verdict"] == "unreliable"
    assert "aerial RGB input; the model was trained on fluorescence" in q["reasons"]
    assert "pixel size in m, the model's in µm" in q["reasons"]
    for name in ("buildings", "trees"):  # the aerial models on fluorescence
        q = assess(_md(name), fluor, _objects(_md(name)), 1e6, None)
        assert q["verdict"] == "unreliable" and q["reasons"][0] == "fluorescence input; the model was trained on aerial RGB"


def test_a_rare_modality_with_a_weak_validation_score_is_doubtful():
    md = _md("default")  # DSB2018: 16 % H&E, validation F1 there far below fluorescence
    he = _domain(sorted(shared("he_consep", "images", "test").glob("*.jpg"))[0])
    q = assess(md, he, _objects(md), 1e6, "um")
    assert q["verdict"] == "doubtful", q
    assert q["reasons"][0].startswith("brightfield H&E input; only 1") and "validation F1" in q["reasons"][0]


def test_object_signals_name_what_is_wrong():
    md = _md("default")
    fluor = _domain(_dsb("fluor"))
    big = assess(md, fluor, _objects(md, area_scale=1800), 1e9, None)  # ~448,000 px "nuclei" (H&E slides, issue #21)
    assert big["verdict"] == "unreliable" and big["reasons"][0].startswith("median object area")
    assert "× the largest median of a training image" in big["reasons"][0] and big["signals"]["area_factor"] > 10
    low = assess(md, fluor, _objects(md, score=0.3), 1e6, None)
    assert low["verdict"] == "unreliable" and "100% of objects score below the model's validation 5th percentile" in low["reasons"][0]
    o = _objects(md, n=2000)
    cover = assess(md, fluor, o, o["area_px"].sum() / 0.9, None)
    assert cover["verdict"] == "doubtful" and cover["reasons"][0].startswith("objects cover 90% of the scene; at most")


def test_classical_model_has_scene_checks_only():
    objs = {"area_px": np.full(10, 100), "score": np.ones(10), "doubtful": np.zeros(10, bool)}
    q = assess(None, {"modality": "aerial"}, objs, 10_000, "m")
    assert q["verdict"] == "ok" and "no training-domain record" in q["note"] and q["signals"]["coverage"] == 0.1
    q = assess(None, None, objs, 1_500, None)
    assert q["verdict"] == "doubtful" and q["reasons"] == ["objects cover 67% of the scene"]


def test_per_object_flag_and_the_gate():
    lim = object_limits(_md("default"))
    rec = _md("default")["domain"]
    assert lim["min_score"] == rec["validation"]["score"]["p01"]
    area = np.array([100, int(lim["max_area_px"]) + 1, 100])
    score = np.array([0.9, 0.9, lim["min_score"] / 2])
    assert doubtful_objects(area, score, lim).tolist() == [False, True, True]
    assert not doubtful_objects(area, score, None).any()
    assert object_limits(None) is None
    ok, bad = {"verdict": "ok"}, {"verdict": "unreliable"}
    assert not refuses(ok, "unreliable") and refuses(bad, "unreliable") and refuses(bad, "doubtful")
    assert refuses({"verdict": "doubtful"}, "doubtful") and not refuses({"verdict": "doubtful"}, "unreliable")
    assert not refuses(bad, None)
    assert quality_line("x", {"verdict": "doubtful", "reasons": ["a", "b"]}) == "x: quality doubtful: a; b"


def test_fail_on_flag_config_and_error():
    args = build_parser().parse_args(["segment", "in.tif", "--out", "o", "--fail-on", "unreliable"])
    assert config_from_args(args).quality.fail_on == "unreliable"
    assert SegmentConfig().quality.fail_on is None
    with pytest.raises(ConfigError, match="quality.fail_on"):
        from pipeline.config_file import segment_config

        segment_config(None, {"quality": {"fail_on": "bad"}})
    err = QualityGateError("x: quality unreliable — not published", "unreliable")
    assert err.exit_code == 3 and err.verdict == "unreliable"


def test_banner_row_and_ledger_carry_the_verdict():
    q = {"verdict": "unreliable", "reasons": ["brightfield H&E input; the model was trained on <fluorescence>"], "signals": {}}
    html = quality_banner(q)
    assert 'class="quality q-unreliable"' in html and "&lt;fluorescence&gt;" in html and "<li>" in html
    assert quality_banner(None) == ""
    s = {"input": "a.tif", "outputs": {"parquet": "o/a.parquet"}, "objects": 3, "width": 1, "height": 1, "quality": q}
    row = batch_row(s)
    assert row["quality"] == "unreliable" and row["quality_reasons"].startswith("brightfield H&E")
    assert failed_row("a.tif", "a", "refused", "unreliable")["quality"] == "unreliable"


# ------------------------------------------------------------------------------------------- real runs
def _run(model: str, path: Path, out: Path, client, **cfg):
    from pipeline.runner import segment_scene

    return segment_scene(str(path), out, SegmentConfig(model=model, label_image=False, qupath_geojson=False, **cfg),
                         client=client)


@pytest.mark.slow  # the shipped models on real images
@pytest.mark.parametrize("model, path", [
    ("default", lambda: _dsb("fluor")),  # DSB2018 fluorescence, a validation image
    ("buildings", lambda: shared("aerial", "banepa_buildings", "chips", "OAM-386690-220241-19.tif")),  # Banepa, unseen
])
def test_in_domain_runs_are_ok(model, path, tmp_path, dask_client_session):
    import geopandas as gpd

    s = _run(model, path(), tmp_path, dask_client_session, report=False)
    assert s["quality"]["verdict"] == "ok", s["quality"]
    g = gpd.read_parquet(s["outputs"]["parquet"])
    assert g["doubtful"].dtype == bool and g["doubtful"].mean() < 0.2
    assert json.loads(Path(s["outputs"]["json"]).read_text())["quality"]["verdict"] == "ok"


@pytest.mark.slow  # the shipped models on images of another field
@pytest.mark.parametrize("model, path, reason", [
    ("default", lambda: shared("aerial", "kampala_buildings", "chips", "OAM-619224-523264-20.tif"), "aerial RGB input"),
    ("buildings", lambda: _dsb("fluor"), "fluorescence input"),
    ("trees", lambda: sorted(shared("he_consep", "images", "test").glob("*.jpg"))[0], "brightfield H&E input"),
])
def test_crossed_runs_are_not_ok(model, path, reason, tmp_path, dask_client_session):
    s = _run(model, path(), tmp_path, dask_client_session, report=False)
    assert s["quality"]["verdict"] == "unreliable" and s["quality"]["reasons"][0].startswith(reason), s["quality"]


@pytest.mark.slow  # two real runs through the command line
def test_fail_on_unreliable_publishes_nothing_and_exits_3(tmp_path, capsys):
    import pyarrow.csv as pacsv

    fluor = _dsb("fluor")
    banepa = shared("aerial", "banepa_buildings", "chips", "OAM-386690-220241-19.tif")
    out = tmp_path / "out"
    code = main(["segment", str(banepa), str(fluor), "--out", str(out), "--model", "buildings", "--fail-on", "unreliable",
                 "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and f"{fluor.stem}: quality unreliable: fluorescence input" in err and "not published" in err
    assert not list(out.glob(f"{fluor.stem}*")) and (out / f"{banepa.stem}.json").exists()
    rows = {r["stem"]: r for r in pacsv.read_csv(out / "summary.csv").to_pylist()}
    assert (rows[fluor.stem]["status"], rows[fluor.stem]["quality"]) == ("failed", "unreliable")
    assert (rows[banepa.stem]["status"], rows[banepa.stem]["quality"]) == ("ok", "ok")
    assert not (out / ".seamline-work" / fluor.stem).exists()  # the refused scene's work folder is gone too


@pytest.mark.slow  # a real run under watch
def test_watch_records_a_refusal_and_does_not_retry_it(tmp_path, dask_client_session):
    from PIL import Image

    from pipeline.watch import read_ledger, watch_once

    src = tmp_path / "incoming"
    src.mkdir()
    Image.open(_dsb("fluor")).convert("RGB").save(src / "cells.tif")  # a real fluorescence image, as TIFF
    cfg = SegmentConfig(model="buildings", label_image=False, qupath_geojson=False, report=False,
                        quality={"fail_on": "unreliable"})
    r1 = watch_once(str(src), str(tmp_path / "dest"), cfg, client=dask_client_session)
    assert (r1["processed"], r1["failed"]) == (0, 1) and r1["results"][0]["retry"] is False
    led = read_ledger(str(tmp_path / "dest")).iloc[0]
    assert (led.status, led.quality) == ("failed", "unreliable") and "fluorescence input" in led.error
    r2 = watch_once(str(src), str(tmp_path / "dest"), cfg, client=dask_client_session, max_attempts=5)
    assert (r2["processed"], r2["failed"], r2["refused"]) == (0, 0, 1)  # not retried: same scene, same settings
    r3 = watch_once(str(src), str(tmp_path / "dest"), cfg.model_copy(update={"quality": QualityParams()}),
                    client=dask_client_session)
    assert r3["processed"] == 1 and r3["results"][0]["quality"] == "unreliable"  # other settings: run, published


@pytest.mark.slow  # a real headless Chromium
def test_report_banner_in_headless_chromium(tmp_path, dask_client_session):
    import os

    from test_report import _chrome

    s = _run("trees", sorted(shared("he_consep", "images", "test").glob("*.jpg"))[0], tmp_path, dask_client_session)
    driver = _chrome(tmp_path)
    try:
        driver.get(Path(s["outputs"]["report"]).resolve().as_uri())
        banner = driver.find_element("id", "quality")
        assert banner.text.startswith("Quality: unreliable") and "brightfield H&E input" in banner.text
        top = driver.execute_script("return document.getElementById('quality').getBoundingClientRect().top")
        assert top < 150  # at the top of the page, under the title
        assert not driver.get_log("browser")
        shot = Path(os.environ.get("SEAMLINE_SCREENSHOT_DIR", tmp_path)) / "report_quality.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()
