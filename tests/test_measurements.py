"""Per-object measurements: computed in the tile stage, equal to scikit-image's ``regionprops`` on the
whole-image label image, in physical units, and the same for an object joined across seams as in an untiled run."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from helpers import rasterize_output

from pipeline.config import SegmentConfig
from pipeline.runner import segment_scene
from pipeline.synthetic import write_scene

PX = (0.5, 0.25)  # anisotropic µm pixels: axis lengths must use both


@pytest.fixture(scope="module")
def two_channel_scene(tmp_path_factory):
    """Dense objects with objects larger than a tile, two channels that differ per pixel."""
    d = tmp_path_factory.mktemp("meas")
    one = d / "one.tif"
    write_scene(one, 300, 340, crs=None, seed=5, cell=20, radius=(4, 9), fill=0.9, big=1)
    with rasterio.open(one) as ds:
        a = ds.read(1)
        prof = ds.profile
    rng = np.random.default_rng(1)
    b = (a // 3 + rng.integers(0, 50, a.shape)).astype(np.uint16)  # a second, noisier channel
    prof.update(count=2)
    path = d / "two.tif"
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(np.stack([a, b]))
    return path


@pytest.fixture(scope="module")
def runs(two_channel_scene, dask_client_session, tmp_path_factory):
    out = {}
    for name, tile, halo in (("whole", 1024, 48), ("tiled", 96, 40)):
        cfg = SegmentConfig(model="classical", tile=tile, halo=halo, pixel_size_um=PX)
        out[name] = segment_scene(str(two_channel_scene), tmp_path_factory.mktemp(name), cfg, client=dask_client_session)
    return out


MEAS = ["major_axis", "minor_axis", "eccentricity", "orientation", "solidity", "circularity",
        *[f"ch{c}_{s}" for c in (1, 2) for s in ("mean", "median", "std", "min", "max", "integrated")]]


def test_joined_objects_measure_as_untiled(runs):
    whole = gpd.read_parquet(runs["whole"]["outputs"]["parquet"])
    tiled = gpd.read_parquet(runs["tiled"]["outputs"]["parquet"])
    assert runs["tiled"]["joined_objects"] > 15
    assert len(whole) == len(tiled)
    key = lambda g: list(zip(g.centroid_x.round(6), g.centroid_y.round(6)))  # noqa: E731
    w = whole.assign(k=key(whole)).set_index("k").sort_index()
    t = tiled.assign(k=key(tiled)).set_index("k").sort_index()
    assert (w.index == t.index).all()
    # Objects that crossed a seam in the tiled run: several tiles' pieces in one object.
    crossed = t.geometry.bounds.pipe(lambda b: ((b.minx // 96) != ((b.maxx - 1e-9) // 96)) | ((b.miny // 96) != ((b.maxy - 1e-9) // 96)))
    assert crossed.sum() > 15
    for c in ["area_px", "area", "perimeter", *MEAS]:
        np.testing.assert_allclose(t[c].to_numpy(), w[c].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=c)


def test_measurements_match_regionprops(runs, two_channel_scene):
    from skimage.measure import regionprops

    s = runs["whole"]
    g = gpd.read_parquet(s["outputs"]["parquet"]).set_index("object_id")
    with rasterio.open(two_channel_scene) as ds:
        img = ds.read()
        lab = rasterize_output(s["outputs"]["parquet"], (ds.height, ds.width), ds.transform)
    assert s["channels"] == ["ch1", "ch2"]
    checked = 0
    for rp in regionprops(lab):
        row = g.loc[rp.label]
        assert row.area_px == rp.area
        for c in (0, 1):
            v = img[c][rp.coords[:, 0], rp.coords[:, 1]].astype(np.float64)
            name = f"ch{c + 1}"
            assert row[f"{name}_mean"] == pytest.approx(v.mean(), rel=1e-9)
            assert row[f"{name}_median"] == np.median(v)
            assert row[f"{name}_std"] == pytest.approx(v.std(), rel=1e-9, abs=1e-9)
            assert (row[f"{name}_min"], row[f"{name}_max"]) == (v.min(), v.max())
            assert row[f"{name}_integrated"] == pytest.approx(v.sum(), rel=1e-12)
        # Shape in µm: the pixel-centre covariance scaled by the pixel size (x = column, y = row).
        yy, xx = rp.coords[:, 0] * PX[1], rp.coords[:, 1] * PX[0]
        ev = np.linalg.eigvalsh(np.cov(np.stack([xx, yy]), bias=True))
        assert row.major_axis == pytest.approx(4 * np.sqrt(ev[1]), rel=1e-9)
        assert row.minor_axis == pytest.approx(4 * np.sqrt(max(ev[0], 0)), rel=1e-9, abs=1e-9)
        assert row.area == pytest.approx(rp.area * PX[0] * PX[1])
        assert 0 < row.solidity <= 1 + 1e-12 and 0 < row.circularity <= 1.0
        checked += 1
    assert checked == len(g) > 50


def test_shape_features_of_known_ellipse(dask_client_session, tmp_path):
    """An ellipse 2:1, major axis at +30° counter-clockwise from the x axis as displayed (y up)."""
    from skimage.draw import ellipse

    img = np.full((200, 220), 10, np.uint16)
    rr, cc = ellipse(100, 110, 20, 40, rotation=np.radians(30))  # skimage: rotation counter-clockwise as displayed
    img[rr, cc] = 3000
    path = tmp_path / "ellipse.tif"
    with rasterio.open(path, "w", driver="GTiff", height=200, width=220, count=1, dtype="uint16") as ds:
        ds.write(img, 1)
    s = segment_scene(str(path), tmp_path / "o", SegmentConfig(model="classical", tile=128, halo=48, pixel_size_um=(1, 1),
                                                                        classical={"threshold": 0.5}),
                      client=dask_client_session)
    g = gpd.read_parquet(s["outputs"]["parquet"])
    assert len(g) == 1
    r = g.iloc[0]
    assert r.orientation == pytest.approx(30, abs=1.5)
    assert r.major_axis == pytest.approx(80, rel=0.03) and r.minor_axis == pytest.approx(40, rel=0.03)
    assert r.eccentricity == pytest.approx(np.sqrt(1 - 0.25), abs=0.01)
    # 2:1 ellipse: circularity 4πab / (Ramanujan perimeter)² = 0.84 (the raw pixel staircase would give 0.48)
    assert r.solidity > 0.95 and r.circularity == pytest.approx(0.84, abs=0.04)
    assert r.ch1_median == 3000 and r.ch1_min == 3000
    # Per scene: the valid image area and objects per mm².
    assert s["tissue_area_unit"] == "mm2" and s["tissue_area"] == pytest.approx(200 * 220 / 1e6)
    assert s["objects_density"] == pytest.approx(1 / s["tissue_area"])


def test_qupath_geojson(runs):
    """The structure QuPath's GeoJSON import reads: detections with classification and numeric measurements,
    coordinates in full-resolution pixels, y = row (the GeoParquet of an un-georeferenced image has the same
    polygons at y = -row, where QGIS places the image)."""
    import json
    import math

    import shapely
    import shapely.affinity

    s = runs["tiled"]
    fc = json.loads(open(s["outputs"]["qupath_geojson"], encoding="utf-8").read())
    g = gpd.read_parquet(s["outputs"]["parquet"]).set_index("object_id")
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == len(g) == s["objects"]
    for f in fc["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        p = f["properties"]
        assert p["objectType"] == "detection"
        cls = p["classification"]
        assert isinstance(cls["name"], str) and len(cls["color"]) == 3 and all(0 <= c <= 255 for c in cls["color"])
        m = p["measurements"]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in m.values())
        row = g.loc[m["Object ID"]]
        assert shapely.geometry.shape(f["geometry"]).equals(shapely.affinity.scale(row.geometry, 1, -1, origin=(0, 0)))
        assert m["ch2: Median"] == row.ch2_median and m["Area µm^2"] == pytest.approx(row.area)
        assert {"ch1: Mean", "ch1: Std.Dev.", "ch1: Min", "ch1: Max", "Circularity", "Solidity"} <= m.keys()


def test_ome_zarr_labels(runs, two_channel_scene):
    """ome-zarr-py reads the NGFF label image; its pixels are the objects' ids, one id per joined object."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    s = runs["tiled"]
    nodes = list(Reader(parse_url(s["outputs"]["ome_zarr"] + "/labels"))())
    (node,) = [n for n in nodes if any(isinstance(sp, Label) for sp in n.specs)]
    levels = [np.asarray(d) for d in node.data]
    assert node.metadata["name"] == "objects" and len(levels) >= 2
    assert [a["name"] for a in node.metadata["axes"]] == ["y", "x"]
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [PX[1], PX[0]]
    with rasterio.open(two_channel_scene) as ds:
        ref = rasterize_output(s["outputs"]["parquet"], (ds.height, ds.width), ds.transform)
    assert levels[0].dtype == np.uint32 and np.array_equal(levels[0], ref)
    assert np.array_equal(levels[1], levels[0][::2, ::2])  # nearest: labels never interpolated
    assert len(np.unique(levels[0])) - 1 == s["objects"]
