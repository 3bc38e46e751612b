"""Areas are right in real units: projected m², geodesic m² in lon/lat, µm² from the TIFF's pixel size."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject

from pipeline.config import SegmentConfig
from pipeline.runner import segment_scene
from pipeline.synthetic import write_scene

BIG = dict(cell=100, radius=(22, 38), fill=0.9)


def _run(path, out, client, **kw):
    cfg = SegmentConfig(model="classical", tile=256, halo=96, **kw)
    s = segment_scene(str(path), out, cfg, client=client)
    return s, gpd.read_parquet(s["outputs"]["parquet"])


def test_projected_area_is_exact_polygon_area_in_m2(tmp_path, dask_client_session):
    p = tmp_path / "utm.tif"
    write_scene(p, 500, 600, seed=5, crs="EPSG:32633", **BIG)
    s, g = _run(p, tmp_path, dask_client_session)
    assert len(g) > 10 and set(g.area_unit) == {"m2"}
    assert g.crs.to_epsg() == 32633
    # 0.5 m pixels: a polygon of n pixels covers n * 0.25 m², and the geometry's own area agrees.
    np.testing.assert_allclose(g["area"], g.area_px * 0.25, rtol=1e-9)
    np.testing.assert_allclose(g["area"], g.geometry.area, rtol=5e-3)  # within 0.5% of the exact polygon area
    assert s["area_unit"] == "m2" and s["area_stats"]["sum"] == pytest.approx(g["area"].sum())
    assert s["peak_rss_process_tree_mb"] > 50 and set(s["timings_s"]) >= {"ingest_and_stats", "tiles", "stitch", "write", "total"}


def test_feet_crs_area_converted_to_m2(tmp_path, dask_client_session):
    p = tmp_path / "ft.tif"
    write_scene(p, 300, 300, seed=6, crs="EPSG:2263", transform=Affine(2.0, 0, 980000, 0, -2.0, 200000), **BIG)
    _, g = _run(p, tmp_path, dask_client_session)
    assert set(g.area_unit) == {"m2"}
    np.testing.assert_allclose(g["area"], g.area_px * (2.0 * 0.3048006096) ** 2, rtol=1e-6)


def test_geographic_scene_gets_geodesic_m2_equal_to_projected(tmp_path, dask_client_session):
    utm = tmp_path / "utm.tif"
    write_scene(utm, 700, 700, seed=7, crs="EPSG:32633", **BIG)
    ll = tmp_path / "ll.tif"
    with rasterio.open(utm) as src:
        tr, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
        prof = src.profile | {"crs": "EPSG:4326", "transform": tr, "width": w, "height": h}
        with rasterio.open(ll, "w", **prof) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), resampling=Resampling.nearest)
    # The same segmentation on both (one threshold): the test is about areas, not about Otsu on a
    # reprojected image whose nodata border changes the sample.
    fixed = {"threshold": 0.3}
    _, g_utm = _run(utm, tmp_path / "a", dask_client_session, classical=fixed)
    _, g_ll = _run(ll, tmp_path / "b", dask_client_session, classical=fixed)
    assert set(g_ll.area_unit) == {"m2"} and g_ll.crs.to_epsg() == 4326
    # Planar area in degrees would be ~1e-9: geodesic m² must be in the same range as the UTM m².
    c_utm = gpd.GeoSeries(gpd.points_from_xy(g_utm.centroid_x, g_utm.centroid_y), crs=32633).to_crs(4326)
    c_ll = gpd.points_from_xy(g_ll.centroid_x, g_ll.centroid_y)
    matched = []
    for i, pt in enumerate(c_utm):
        d = np.hypot(np.array([q.x for q in c_ll]) - pt.x, np.array([q.y for q in c_ll]) - pt.y)
        j = int(d.argmin())
        if d[j] < 2e-5 and g_utm.tile.iloc[i] >= 0:  # same object (within ~2 m)
            matched.append((g_utm["area"].iloc[i], g_ll["area"].iloc[j]))
    a = np.array(matched)
    assert len(a) >= 0.9 * len(g_utm) > 10
    rel = np.abs(a[:, 1] - a[:, 0]) / a[:, 0]
    assert np.median(rel) < 0.01, rel
    assert abs(a[:, 1].sum() / a[:, 0].sum() - 1) < 0.01


def test_ome_tiff_pixel_size_gives_um2_and_pixel_coordinates(tmp_path, dask_client_session):
    p = tmp_path / "slide.ome.tif"
    write_scene(p, 400, 500, seed=8, crs=None, pixel_size_um=0.325, cell=24, radius=(4, 9))
    s, g = _run(p, tmp_path, dask_client_session)
    assert set(g.area_unit) == {"um2"} and s["pixel_size_um"] == [0.325, 0.325]
    np.testing.assert_allclose(g["area"], g.area_px * 0.325**2, rtol=1e-9)
    # Geometry in pixel coordinates placed as GDAL and QGIS place the image (x = column, y = -row): it overlays it
    minx, miny, maxx, maxy = g.total_bounds
    assert 0 <= minx and -400 <= miny and maxx <= 500 and maxy <= 0
    assert g.crs is not None and not g.crs.is_geographic  # engineering CRS, never "omitted = lon/lat"


def test_plain_tiff_without_metadata_reports_pixels(tmp_path, dask_client_session):
    p = tmp_path / "plain.tif"
    write_scene(p, 200, 260, seed=9, crs=None)
    _, g = _run(p, tmp_path, dask_client_session)
    assert set(g.area_unit) == {"px"}
    np.testing.assert_allclose(g["area"], g.area_px)
