"""Lengths in metres mean metres in any CRS (#26, #22): the ground pixel size of a scene in EPSG:4326, Web
Mercator or UTM is its size on the ground at the scene centre, and the same pixels georeferenced in UTM and in
EPSG:4326 give the same building outlines through configs/buildings.yaml (regularisation tolerance in metres)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.transform import Affine
from servers import ROOT

from pipeline.io.scene import ground_pixel_size

DATA = ROOT.parent / "shared" / "data" / "aerial"
BANEPA = DATA / "banepa_buildings" / "chips"


def _utm_transform(x0: float, y0: float, px: float) -> tuple:
    return (px, 0.0, x0, 0.0, -px, y0)


def test_ground_pixel_size_is_the_same_in_every_crs():
    """One place (Banepa, 27.63 N) with 0.5 m pixels, gridded in UTM 45N, in EPSG:4326 and in Web Mercator."""
    from pyproj import Geod

    x0, y0, px = 338_000.0, 3_057_000.0, 0.5
    utm = ground_pixel_size("EPSG:32645", _utm_transform(x0, y0, px), 1000, 1000)
    lon, lat = Transformer.from_crs("EPSG:32645", "EPSG:4326", always_xy=True).transform(x0, y0)
    g = Geod(ellps="WGS84")
    dlon = g.fwd(lon, lat, 90, px)[0] - lon  # 0.5 m east and north, in degrees, at this latitude
    dlat = g.fwd(lon, lat, 0, px)[1] - lat
    geo = ground_pixel_size("EPSG:4326", (dlon, 0.0, lon - 500 * dlon, 0.0, -dlat, lat + 500 * dlat), 1000, 1000)
    mx, my = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(lon, lat)
    k = 1 / np.cos(np.radians(lat))  # Web Mercator's own "metres" per ground metre at this latitude (1.13)
    merc = ground_pixel_size("EPSG:3857", (px * k, 0.0, mx - 500 * px * k, 0.0, -px * k, my + 500 * px * k), 1000, 1000)
    for got in (utm, geo):
        assert got == pytest.approx((0.5, 0.5), rel=2e-3), (utm, geo)
    # Web Mercator is not conformal on the ellipsoid: north-south, its metres differ by a further ~0.5 % here
    assert merc == pytest.approx((0.5, 0.5), rel=1e-2), merc
    assert dlon == pytest.approx(5.1e-6, rel=0.05)  # degrees: the map unit the old rule took for a length


def _warp_to_utm(src: Path, dst: Path) -> None:
    """The UTM rendering of a Banepa chip (EPSG:4326, 0.13 m): reprojected onto a 0.13 m UTM 45N grid."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(src) as s:
        t, w, h = calculate_default_transform(s.crs, "EPSG:32645", s.width, s.height, *s.bounds, resolution=0.13)
        prof = {**s.profile, "driver": "GTiff", "crs": "EPSG:32645", "transform": t, "width": w, "height": h,
                "compress": "deflate"}
        prof.pop("photometric", None)
        with rasterio.open(dst, "w", **prof) as d:
            for b in range(1, s.count + 1):
                reproject(rasterio.band(s, b), rasterio.band(d, b), resampling=Resampling.bilinear)


def _same_pixels_in_4326(utm: Path, dst: Path) -> None:
    """The same pixel array georeferenced in EPSG:4326: the affine that maps the UTM grid's corners to
    longitude/latitude (over 70 m the projection is affine to far below a pixel)."""
    with rasterio.open(utm) as s:
        data, prof, t = s.read(), dict(s.profile), s.transform
        to_ll = Transformer.from_crs(s.crs, "EPSG:4326", always_xy=True)
        (lon0, lat0) = to_ll.transform(t.c, t.f)
        (lon1, lat1) = to_ll.transform(t.c + t.a * s.width, t.f)
        (lon2, lat2) = to_ll.transform(t.c, t.f + t.e * s.height)
    geo = Affine((lon1 - lon0) / prof["width"], (lon2 - lon0) / prof["height"], lon0,
                 (lat1 - lat0) / prof["width"], (lat2 - lat0) / prof["height"], lat0)
    with rasterio.open(dst, "w", **{**prof, "crs": "EPSG:4326", "transform": geo}) as d:
        d.write(data)


def _segment(scene: Path, out: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "segment", str(scene), "--out", str(out), "--config",
                        str(ROOT / "configs" / "buildings.yaml"), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / f"{scene.stem}.json").read_text())


@pytest.mark.slow
def test_the_same_place_in_utm_and_in_epsg4326_gives_the_same_buildings(tmp_path):
    chip = sorted(BANEPA.glob("*.tif"))[5]
    utm, geo = tmp_path / "place_utm.tif", tmp_path / "place_4326.tif"
    _warp_to_utm(chip, utm)
    _same_pixels_in_4326(utm, geo)
    s_utm, s_geo = _segment(utm, tmp_path / "utm"), _segment(geo, tmp_path / "geo")
    # the 4326 run knows its ground pixel size: no "pixel size unknown", the same resampling as in UTM
    assert not any("pixel size is unknown" in w for w in s_geo["warnings"]), s_geo["warnings"]
    assert s_geo["source"]["pixel_unit"] == "m" and s_geo["source"]["pixel_size"][0] == pytest.approx(0.13, rel=0.01)
    assert s_geo["source"]["scale"] == pytest.approx(s_utm["source"]["scale"], rel=1e-3)
    a = gpd.read_parquet(tmp_path / "utm" / "place_utm.parquet")
    b = gpd.read_parquet(tmp_path / "geo" / "place_4326.parquet").to_crs(a.crs)
    assert len(a) >= 5 and abs(len(a) - len(b)) <= max(1, len(a) // 20), (len(a), len(b))
    # every building of one run has its twin in the other, outline for outline (regularised in metres in both)
    ious = []
    for g in a.geometry:
        cand = b.geometry[b.geometry.intersects(g)]
        ious.append(max((g.intersection(h).area / g.union(h).area for h in cand), default=0.0))
    ious = np.asarray(ious)
    assert np.median(ious) >= 0.95 and (ious >= 0.95).mean() >= 0.9, np.round(np.sort(ious), 3)
    # vertex counts alike: no triangles or slivers from a tolerance taken in degrees
    va = np.median([len(g.exterior.coords) for g in a.geometry if g.geom_type == "Polygon"])
    vb = np.median([len(g.exterior.coords) for g in b.geometry if g.geom_type == "Polygon"])
    assert vb >= 5 and abs(va - vb) <= 1, (va, vb)
    # areas and perimeters in m² / m on the ground in both
    assert s_geo["area_unit"] == s_utm["area_unit"] == "m2"
    assert b.area_raw.sum() == pytest.approx(a.area_raw.sum(), rel=0.03)
    g_geo = gpd.read_parquet(tmp_path / "geo" / "place_4326.parquet")
    assert g_geo.perimeter_unit.iloc[0] == "m"
    assert np.median(g_geo.perimeter) == pytest.approx(np.median(a.perimeter), rel=0.05)
