"""Building outline regularisation: few vertices, right angles, fallback when the fit is poor, and the
area before and after in the output (off unless configured)."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from shapely import affinity
from shapely.geometry import Polygon

from pipeline.config import SegmentConfig
from pipeline.runner import segment_scene
from pipeline.stages.regularize import regularize_polygon


def _angles(poly) -> list[float]:
    c = np.asarray(poly.exterior.coords)[:-1]
    out = []
    for i in range(len(c)):
        d0, d1 = c[i] - c[i - 1], c[(i + 1) % len(c)] - c[i]
        out.append(float(np.degrees(np.arccos(np.dot(d0, d1) / np.linalg.norm(d0) / np.linalg.norm(d1)))))
    return out


def test_noisy_rotated_rectangle_becomes_four_right_angles():
    rng = np.random.default_rng(0)
    pts = []
    for a, b in (((0, 0), (20, 0)), ((20, 0), (20, 10)), ((20, 10), (0, 10)), ((0, 10), (0, 0))):
        for t in np.linspace(0, 1, 30, endpoint=False):
            pts.append((a[0] + (b[0] - a[0]) * t + rng.normal(0, 0.15), a[1] + (b[1] - a[1]) * t + rng.normal(0, 0.15)))
    noisy = affinity.rotate(Polygon(pts), 27, origin=(0, 0)).buffer(0)
    r = regularize_polygon(noisy, tolerance=1.0)
    assert len(r.exterior.coords) == 5 and len(noisy.exterior.coords) > 100
    assert _angles(r) == pytest.approx([90.0] * 4, abs=1e-6)
    assert r.area == pytest.approx(200, rel=0.03)


def test_l_shape_kept_and_round_shape_falls_back_to_simplified():
    ell = affinity.rotate(Polygon([(0, 0), (20, 0), (20, 8), (8, 8), (8, 20), (0, 20)]), 10)
    r = regularize_polygon(ell, 0.5)
    assert len(r.exterior.coords) == 7 and r.area == pytest.approx(ell.area, rel=1e-6)
    theta = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    circle = Polygon(np.c_[np.cos(theta), np.sin(theta)] * 10)
    r = regularize_polygon(circle, 0.5)
    assert len(r.exterior.coords) < 25 and r.area == pytest.approx(circle.area, rel=0.05)
    # a fit below min_iou keeps the simplified outline instead of the squared one
    strict = regularize_polygon(circle, 0.5, min_iou=0.9999)
    assert strict.equals(circle.simplify(0.5, preserve_topology=True))


def test_segment_writes_regularised_outlines_and_area_before(tmp_path, dask_client_session):
    """Rotated bright rectangles on a 0.25 m UTM grid: pixel outlines are staircases; regularised outlines have
    four vertices, and area_raw keeps the staircase area."""
    from rasterio.features import rasterize

    h = w = 240
    rects = [affinity.rotate(Polygon([(x, y), (x + 40, y), (x + 40, y + 24), (x, y + 24)]), ang)
             for (x, y, ang) in ((30, 30, 20), (140, 40, 35), (60, 150, 5), (160, 160, 60))]
    img = rasterize([(r, 200) for r in rects], out_shape=(h, w), fill=20, dtype="uint8")
    p = tmp_path / "roofs.tif"
    with rasterio.open(p, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(0.25, 0, 500000, 0, -0.25, 4000000)) as ds:
        ds.write(img, 1)
    reg = {"classes": ["building"], "tolerance": 0.5}
    cfg = SegmentConfig(model="classical", tile=128, halo=64, class_name="building", regularize=reg,
                        classical={"threshold": 0.5})
    s = segment_scene(str(p), tmp_path / "out", cfg, client=dask_client_session)
    g = gpd.read_parquet(s["outputs"]["parquet"])
    assert len(g) == 4 and "area_raw" in g.columns
    assert all(len(geom.exterior.coords) == 5 for geom in g.geometry)
    np.testing.assert_allclose(g["area"], g.geometry.area, rtol=1e-9)  # area = the regularised outline's
    np.testing.assert_allclose(g["area_raw"], g.area_px * 0.0625, rtol=1e-9)  # before: the pixel outline's
    np.testing.assert_allclose(g["area"], g["area_raw"], rtol=0.08)  # squaring moves little area
    np.testing.assert_allclose(g["area"], 40 * 24 * 0.0625, rtol=0.1)
    summary = json.loads((tmp_path / "out" / "roofs.json").read_text())
    assert summary["counts_per_class"] == {"building": 4} and summary["area_per_class"]["building"] == pytest.approx(g["area"].sum())
    gp = gpd.read_file(tmp_path / "out" / "roofs.gpkg", layer="objects")
    assert "area_raw" in gp.columns and set(gp["class"]) == {"building"}
