"""Object scale (the object-diameter route of the resolution rule) and normalisation robust to empty
background."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from helpers import rasterize_output, write_nuclei_slide

from pipeline.config import SegmentConfig
from pipeline.evaluation.metrics import counts_at, iou_matrix, match
from pipeline.models.normalize import apply_normalization, percentiles
from pipeline.runner import segment_scene
from pipeline.stages.objectscale import choose_scale, estimate_diameter

MD = {"object_diameter_px": 18.0, "object_diameter_um": 8.0}


def _never():
    raise AssertionError("the estimate must not run when config or pixel size decide")


def test_scale_routes_in_order():
    assert choose_scale(MD, (0.25, 0.25), 36.0, _never).as_dict()["source"] == "config"
    s = choose_scale(MD, (0.25, 0.25), None, _never)  # 8 µm at 0.25 µm/px = 32 px -> 18/32
    assert s.source == "pixel_size" and s.factor == pytest.approx(18 / 32) and s.scene_diameter_px == pytest.approx(32)
    assert choose_scale(MD, None, None, _never).factor == 1.0  # no pixel size: native unless asked to estimate
    s = choose_scale(MD, None, "estimate", lambda: 27.0)  # asked: estimated, and said so
    assert s.source == "estimate" and s.factor == pytest.approx(18 / 27) and "estimated" in s.warnings[0]
    s = choose_scale(MD, None, 9.0, _never)  # smaller objects than the model's: never upsampled, said so
    assert s.factor == 1.0 and "does not upsample" in s.warnings[0]
    assert choose_scale(MD, None, "estimate", lambda: None).factor == 1.0  # nothing to estimate from: native, with a warning
    assert choose_scale(MD, (0.25, 0.25), "native", _never).factor == 1.0
    assert choose_scale(MD, (0.45, 0.45), None, _never).factor == 1.0  # within the tolerance: no resampling
    assert choose_scale({}, (0.25, 0.25), None, _never).source == "model"  # a model without a nominal size
    with pytest.raises(ValueError, match="object_diameter"):  # pydantic wraps the ParameterError
        SegmentConfig(object_diameter=0)


def test_diameter_estimate_from_the_image():
    """Synthetic nuclei of known size, touching ones included: the estimate lands within 25 %."""
    from pipeline.synthetic import render, scene_blobs

    for radius in ((4, 7), (10, 16)):
        blobs = scene_blobs(600, 600, cell=int(3 * radius[1]), radius=radius, fill=0.9, seed=3)
        img, lab = render(blobs, 0, 600, 600)
        img = apply_normalization(img[None].astype(np.float64), percentiles(img[None]))[0]
        areas = np.bincount(lab.ravel())[1:]
        true = np.median(2 * np.sqrt(areas[areas > 0] / np.pi))
        est = estimate_diameter([img + np.random.default_rng(0).normal(0, 0.02, img.shape)])
        assert est == pytest.approx(true, rel=0.25), (radius, est, true)


def test_normalisation_robust_to_empty_background():
    rng = np.random.default_rng(0)
    scene = rng.normal(100, 5, (1, 800, 800)).round()
    scene[0, 10:30, 10:30] = 3000  # 0.06 % foreground: p99.8 of all is noise
    (lo, hi), = percentiles(scene)
    assert hi >= 2900 and apply_normalization(scene, [(lo, hi)])[0, 400:, 400:].max() < 0.05
    rgb = np.stack([rng.integers(0, 4, (300, 300)), rng.integers(0, 3, (300, 300)), rng.integers(0, 256, (300, 300))])
    stats = percentiles(rgb)  # DAPI rendered as blue: red and green are noise and must stay near 0
    norm = apply_normalization(rgb, stats)
    assert norm[0].max() < 0.05 and norm[1].max() < 0.05 and norm[2].max() == 1.0
    grey = rng.integers(0, 256, (1, 300, 300))
    assert percentiles(grey) == [tuple(float(x) for x in np.percentile(grey, [1, 99.8]))]  # a filled image: as before


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_nuclei_slide(tmp_path_factory.mktemp("scaled"))


@pytest.mark.slow  # two runs
def test_rescaled_run_tiled_equals_untiled(slide, dask_client_session, tmp_path):
    """object_diameter 24 px: the scene runs at 0.74 of its resolution; polygons come back in input pixels,
    areas in µm², and 4 tiles of 288 (a multiple of the network's 32-px stride) give the objects of one whole-image window."""
    img, truth = slide
    runs = {}
    for tile in (1024, 288):
        cfg = SegmentConfig(model="default", tile=tile, batch_size=2, object_diameter=24)
        runs[tile] = segment_scene(str(img), tmp_path / str(tile), cfg, client=dask_client_session)
    whole, tiled = runs[1024], runs[288]
    sc = whole["object_scale"]
    assert sc["source"] == "config" and sc["factor"] == pytest.approx(17.7 / 24, abs=1e-4)
    assert whole["source"]["level0"] == [700, 620] and (whole["width"], whole["height"]) == (458, 517)
    assert whole["source"]["scale"] == pytest.approx(24 / 17.7, rel=1e-3)
    assert whole["tiling"]["tiles"] == 1 and tiled["tiling"]["tiles"] == 4 and tiled["joined_objects"] >= 5
    a = rasterize_output(whole["outputs"]["parquet"], truth.shape, rasterio.Affine.identity())
    b = rasterize_output(tiled["outputs"]["parquet"], truth.shape, rasterio.Affine.identity())
    gi, _ = match(iou_matrix(a, b)[0], 0.95)
    # Object for object. With the earlier 192 px default halo one object of 521 came out split at 256-px tiles:
    # the heads still moved by up to 0.006-0.010 with context beyond 192 px, enough to flip a marker pixel in a
    # dense cluster; at 256 px they move by 1e-4 (docs/MODEL.md). Tiles off the 32-px grid are refused.
    assert whole["tiling"]["halo"] == tiled["tiling"]["halo"] == 256
    assert tiled["objects"] == whole["objects"] and gi.size == whole["objects"]
    tp, fp, fn = counts_at(truth, a, 0.5)  # in input coordinates: the objects sit on the nuclei
    assert tp / (tp + fp + fn) > 0.8
    g = gpd.read_parquet(whole["outputs"]["parquet"])
    assert set(g.area_unit) == {"um2"}
    np.testing.assert_allclose(g["area"], g.area_px * (0.5 * 24 / 17.7) ** 2, rtol=0.05)  # working px -> µm²
