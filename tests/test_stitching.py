"""Stitching is exact: the tiled result equals the whole-image result, object for object.

Scenes are dense (many objects on seams and corners, touching objects), tile sizes do not divide the image,
and each scene holds blobs larger than a tile. The untiled run is the oracle (one tile covering the image),
compared up to relabelling, as dask-image compares chunked labels with scipy's.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from helpers import rasterize_output

from pipeline.config import SegmentConfig
from pipeline.evaluation.metrics import iou_matrix, match
from pipeline.runner import segment_scene
from pipeline.synthetic import write_scene


@pytest.fixture(scope="module")
def dense_scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("stitch")
    path = d / "dense.tif"
    write_scene(path, 620, 730, seed=3, cell=20, radius=(4, 9), fill=0.9, big=2)
    return path


@pytest.fixture(scope="module")
def oracle(dense_scene, dask_client_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    cfg = SegmentConfig(model="classical", tile=1024, halo=48)
    s = segment_scene(str(dense_scene), out, cfg, client=dask_client_session)
    assert s["tiling"]["tiles"] == 1
    return s


def _labels(summary):
    with rasterio.open(summary["input"]) as ds:
        shape, tr = (ds.height, ds.width), ds.transform
    return rasterize_output(summary["outputs"]["parquet"], shape, tr), gpd.read_parquet(summary["outputs"]["parquet"])


@pytest.mark.parametrize("tile,halo", [(128, 48), (100, 40), (97, 48), (256, 64)])
def test_tiled_equals_untiled(dense_scene, oracle, dask_client_session, tmp_path, tile, halo):
    s = segment_scene(str(dense_scene), tmp_path, SegmentConfig(model="classical", tile=tile, halo=halo),
                      client=dask_client_session)
    assert s["tiling"]["tiles"] > 4
    assert s["joined_objects"] > 20, "the scene must have many objects across seams for this test to mean anything"
    whole, g_whole = _labels(oracle)
    tiled, g_tiled = _labels(s)
    assert g_tiled.object_id.is_unique and g_tiled.object_id.dtype == np.int64
    assert len(g_tiled) == len(g_whole)
    iou, _, _, _ = iou_matrix(whole, tiled)
    gi, pi = match(iou, 0.95)
    # Every object matched one-to-one at IoU >= 0.95: no duplicates, no splits, no merges.
    assert gi.size == len(g_whole) == len(g_tiled)
    # Exactly the same pixels, in fact, for this deterministic model.
    assert (g_tiled.area_px.sum()) == (g_whole.area_px.sum())
    # Objects larger than the halo (and, for the smaller tiles, than a tile) come out whole.
    b = g_tiled.geometry.bounds
    extent_px = max((b.maxx - b.minx).max(), (b.maxy - b.miny).max()) / 0.5  # 0.5 m pixels
    assert extent_px > 2 * halo
    if tile <= 128:
        assert extent_px > tile
    assert g_tiled.geometry.is_valid.all()


def test_resume_skips_finished_tiles(dense_scene, dask_client_session, tmp_path):
    from pipeline.runner import make_job, plan_scene, run_ingest, run_tiles
    from pipeline.settings import resolve_settings

    cfg = SegmentConfig(model="classical", tile=160, halo=32, keep_intermediate=True)
    plan = plan_scene(str(dense_scene), tmp_path, resolve_settings(cfg))
    stats = run_ingest(dask_client_session, plan)
    job = make_job(plan, stats)
    first = run_tiles(dask_client_session, plan, job)
    assert first["tiles"] == len(plan.grid) and first["skipped"] == 0
    # A re-run (dead worker, retried flow) redoes nothing that was finished.
    again = run_tiles(dask_client_session, plan, job)
    assert again["tiles"] == 0 and again["skipped"] == len(plan.grid)
    s = segment_scene(str(dense_scene), tmp_path, cfg, client=dask_client_session)
    assert s["tiles_resumed"] == len(plan.grid)
