"""Seamline's outputs open in real clients: GDAL's ogrinfo and GeoPackage validator, SQLite, DuckDB spatial,
geopandas/pyarrow and QGIS (through the system Python, as a user would run it).

The clients are Debian packages that CI installs with ``.ci/install-clients.sh`` (gdal-bin, python3-qgis,
qgis-providers); a missing one makes these tests FAIL with the package to install, never skip.
DuckDB's spatial extension is loaded from the ``duckdb-extension-spatial`` wheel's file, never downloaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # QGIS, GDAL and DuckDB clients

HEIGHT, WIDTH = 512, 640
SYSTEM_PYTHON = "/usr/bin/python3"
INSTALL_HINT = "run .ci/install-clients.sh (apt-get install --no-install-recommends gdal-bin python3-qgis qgis-providers)"
GPKG_APPLICATION_ID = 0x47504B47  # "GPKG"
GPKG_1_2_USER_VERSION = 10200


# --------------------------------------------------------------------------------------------- helpers
def _seamline() -> str:
    exe = Path(sys.executable).with_name("seamline")
    if exe.exists():
        return str(exe)
    found = shutil.which("seamline")
    if found is None:
        pytest.fail("the seamline CLI is not installed next to this Python (pip install -e .)")
    return found


def _need_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found: install the Debian package {package} ({INSTALL_HINT})")
    return path


def _client_env(tmp: Path) -> dict[str, str]:
    """Environment for the system-Python clients: headless Qt, and none of this venv's Python settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    runtime = tmp / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(runtime), PYTHONNOUSERSITE="1")
    return env


def _need_system_module(module: str, package: str, env: dict[str, str]) -> None:
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail(f"{SYSTEM_PYTHON} not found: install the Debian packages python3 and {package} ({INSTALL_HINT})")
    r = subprocess.run([SYSTEM_PYTHON, "-c", f"import {module}"], env=env, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.fail(f"`{SYSTEM_PYTHON} -c 'import {module}'` failed: install the Debian package {package} "
                    f"({INSTALL_HINT})\n{r.stderr[-2000:]}")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 300)
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _segment(image: Path, out: Path) -> dict:
    r = _run([_seamline(), "segment", str(image), "--out", str(out), "--model", "classical", "--tile", "256",
              "--halo", "32", "--workers", "1"], cwd=out.parent)
    assert r.returncode == 0, f"seamline segment failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    summary = json.loads((out / f"{image.name.split('.')[0]}.json").read_text())
    assert summary["objects"] > 50, summary
    return summary


class Scene:
    def __init__(self, root: Path, name: str, summary: dict):
        self.root = root
        self.parquet = root / "out" / f"{name}.parquet"
        self.gpkg = root / "out" / f"{name}.gpkg"
        self.summary = summary
        self.n = int(summary["objects"])


@pytest.fixture(scope="module")
def geo(tmp_path_factory) -> Scene:
    """A georeferenced scene (UTM 33N, 0.5 m pixels) segmented once for the whole module."""
    from pipeline.synthetic import write_scene

    root = tmp_path_factory.mktemp("clients_geo")
    write_scene(root / "geo.tif", HEIGHT, WIDTH, seed=3, crs="EPSG:32633")
    return Scene(root, "geo", _segment(root / "geo.tif", root / "out"))


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Scene:
    """A microscopy OME-TIFF (0.5 µm pixels, no georeferencing) segmented once for the whole module."""
    from pipeline.synthetic import write_scene

    root = tmp_path_factory.mktemp("clients_micro")
    write_scene(root / "micro.ome.tif", HEIGHT, WIDTH, seed=4, crs=None, pixel_size_um=0.5)
    return Scene(root, "micro", _segment(root / "micro.ome.tif", root / "out"))


# --------------------------------------------------------------------------------------------- GDAL
def _ogrinfo(path: Path) -> str:
    exe = _need_binary("ogrinfo", "gdal-bin")
    r = _run([exe, "-so", "-al", str(path)])
    assert r.returncode == 0, f"ogrinfo failed on {path}:\n{r.stdout}\n{r.stderr}"
    assert not re.search(r"ERROR|Warning", r.stderr), f"ogrinfo complained about {path}:\n{r.stderr}"
    return r.stdout


def _feature_count(info: str) -> int:
    m = re.search(r"^Feature Count: (\d+)$", info, re.M)
    assert m, info
    return int(m.group(1))


def test_ogrinfo_georeferenced(geo):
    info = _ogrinfo(geo.gpkg)
    assert re.search(r"^Layer name: objects$", info, re.M), info
    assert _feature_count(info) == geo.n
    assert "Geometry Column = geom" in info
    assert 'PROJCRS["WGS 84 / UTM zone 33N"' in info
    assert 'ID["EPSG",32633]' in info
    assert re.search(r"^Geometry: (Multi )?Polygon$", info, re.M), info
    for col in ("object_id: Integer64", "class: String", "score: Real", "area: Real", "area_unit: String"):
        assert col in info, info


def test_ogrinfo_microscopy(micro):
    info = _ogrinfo(micro.gpkg)
    assert re.search(r"^Layer name: objects$", info, re.M), info
    assert _feature_count(info) == micro.n
    assert "Undefined Cartesian SRS" in info


def _gpkg_sqlite(path: Path, srs_id: int, n: int) -> None:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA application_id").fetchone()[0] == GPKG_APPLICATION_ID
        assert con.execute("PRAGMA user_version").fetchone()[0] == GPKG_1_2_USER_VERSION
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ext = con.execute("SELECT table_name, column_name, definition, scope FROM gpkg_extensions "
                          "WHERE extension_name = 'gpkg_rtree_index'").fetchall()
        assert ("objects", "geom") in [e[:2] for e in ext], ext
        assert con.execute("SELECT count(*) FROM rtree_objects_geom").fetchone()[0] == n
        assert con.execute("SELECT data_type, srs_id FROM gpkg_contents WHERE table_name = 'objects'").fetchone() == ("features", srs_id)
        assert con.execute("SELECT column_name, srs_id FROM gpkg_geometry_columns WHERE table_name = 'objects'").fetchone() == ("geom", srs_id)
        assert con.execute("SELECT count(*) FROM gpkg_spatial_ref_sys WHERE srs_id = ?", (srs_id,)).fetchone()[0] == 1
        # Req 33: every geometry blob's header names the layer's srs_id
        blob_srs = set()
        for (head,) in con.execute("SELECT substr(geom, 1, 8) FROM objects"):
            assert head[:2] == b"GP" and head[2] == 0, head  # magic, version 0 (= GeoPackage 1.x)
            blob_srs.add(struct.unpack("<i" if head[3] & 1 else ">i", head[4:8])[0])
        assert blob_srs == {srs_id}
    finally:
        con.close()


def test_gpkg_is_geopackage_1_2_with_rtree(geo, micro):
    _gpkg_sqlite(geo.gpkg, 32633, geo.n)
    _gpkg_sqlite(micro.gpkg, -1, micro.n)


def test_gdal_geopackage_validator(geo, micro, tmp_path):
    """GDAL's own conformance checker (osgeo_utils.samples.validate_gpkg, Debian python3-gdal via gdal-bin)."""
    env = _client_env(tmp_path)
    _need_system_module("osgeo_utils.samples.validate_gpkg", "python3-gdal (a dependency of gdal-bin)", env)
    for scene in (geo, micro):
        r = _run([SYSTEM_PYTHON, "-m", "osgeo_utils.samples.validate_gpkg", str(scene.gpkg)], env=env)
        assert r.returncode == 0 and not r.stdout.strip(), f"{scene.gpkg.name} is not a valid GeoPackage:\n{r.stdout}\n{r.stderr[-3000:]}"


# --------------------------------------------------------------------------------------------- DuckDB
def _spatial_extension_file():
    import importlib.metadata as md

    import duckdb

    try:
        files = md.files("duckdb-extension-spatial") or []
    except md.PackageNotFoundError:
        pytest.fail("the PyPI package duckdb-extension-spatial is not installed (pip install -e '.[test]')")
    found = [f for f in files if f.name == "spatial.duckdb_extension"]
    assert found, f"no spatial.duckdb_extension in duckdb-extension-spatial: {[str(f) for f in files]}"
    same = [f for f in found if f"v{duckdb.__version__}" in f.parts]
    return Path((same or found)[0].locate())


@pytest.fixture(scope="module")
def duck():
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.load_extension(str(_spatial_extension_file()))
        loaded = con.sql("SELECT loaded FROM duckdb_extensions() WHERE extension_name = 'spatial'").fetchall()
        assert loaded == [(True,)], loaded
        yield con
    finally:
        con.close()


def test_duckdb_reads_geoparquet(duck, geo, micro):
    import geopandas as gpd
    import shapely

    q = f"read_parquet('{geo.parquet}')"
    assert duck.sql(f"SELECT count(*) FROM {q}").fetchone()[0] == geo.n
    assert duck.sql(f"SELECT count(*) FROM read_parquet('{micro.parquet}')").fetchone()[0] == micro.n

    # the spatial extension turns the GeoParquet column into GEOMETRY (newer DuckDB also carries the CRS)
    gtype = duck.sql(f"SELECT typeof(geometry) FROM {q} LIMIT 1").fetchone()[0]
    assert gtype.startswith("GEOMETRY"), gtype
    if "(" in gtype:
        assert "EPSG:32633" in gtype, gtype

    g = gpd.read_parquet(geo.parquet)
    x0, y0, x1, y1 = g.total_bounds
    wx0, wx1 = x0 + 0.2 * (x1 - x0), x0 + 0.6 * (x1 - x0)
    wy0, wy1 = y0 + 0.3 * (y1 - y0), y0 + 0.8 * (y1 - y0)
    # bbox covering column: objects whose bbox lies inside the window ...
    within = duck.sql(f"SELECT count(*) FROM {q} WHERE bbox.xmin > {wx0} AND bbox.xmax < {wx1} "
                      f"AND bbox.ymin > {wy0} AND bbox.ymax < {wy1}").fetchone()[0]
    cx = g.cx[wx0:wx1, wy0:wy1]
    b = shapely.bounds(cx.geometry.values)
    expect_within = int(((b[:, 0] > wx0) & (b[:, 2] < wx1) & (b[:, 1] > wy0) & (b[:, 3] < wy1)).sum())
    assert 0 < within == expect_within < geo.n
    # ... and the bbox prefilter plus an exact test gives what geopandas' .cx gives
    hits = duck.sql(f"SELECT count(*) FROM {q} WHERE bbox.xmax >= {wx0} AND bbox.xmin <= {wx1} AND bbox.ymax >= {wy0} "
                    f"AND bbox.ymin <= {wy1} AND ST_Intersects(geometry, ST_MakeEnvelope({wx0}, {wy0}, {wx1}, {wy1}))").fetchone()[0]
    assert hits == len(cx) > within

    # the raw WKB column, as any client sees it without GeoParquet support
    duck.sql("SET enable_geoparquet_conversion = false")
    try:
        assert duck.sql(f"SELECT typeof(geometry) FROM {q} LIMIT 1").fetchone()[0] == "BLOB"
        n, worst, unit = duck.sql(f"SELECT count(*), max(abs(ST_Area(ST_GeomFromWKB(geometry)) - area) / area), "
                                  f"any_value(area_unit) FROM {q}").fetchone()
    finally:
        duck.sql("SET enable_geoparquet_conversion = true")
    assert n == geo.n and unit == "m2"
    assert worst < 0.005


# --------------------------------------------------------------------------------------------- geopandas / pyarrow
COLUMNS = ["object_id", "class", "score", "area_px", "area", "area_unit", "perimeter", "centroid_x", "centroid_y"]


def _check_frame(g, n: int, unit: str) -> None:
    assert len(g) == n
    assert set(COLUMNS) <= set(g.columns), list(g.columns)
    assert g["object_id"].dtype == np.int64 and g["object_id"].is_unique
    assert g["area_px"].dtype == np.int64 and (g["area_px"] > 0).all()
    assert (g["class"] == g["class"].iloc[0]).all()
    assert g["score"].between(0, 1).all()
    assert (g["area_unit"] == unit).all()
    assert (g["area"] > 0).all() and (g["perimeter"] > 0).all()
    assert g.geometry.is_valid.all() and not g.geometry.is_empty.any()
    assert set(g.geom_type) <= {"Polygon", "MultiPolygon"}
    c = g.geometry.centroid
    np.testing.assert_allclose(g["centroid_x"], c.x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(g["centroid_y"], c.y, rtol=0, atol=1e-6)


def test_geopandas_reads_both(geo):
    import geopandas as gpd
    import pyproj

    pq_frame = gpd.read_parquet(geo.parquet)
    gpkg_frame = gpd.read_file(geo.gpkg, layer="objects")
    for g in (pq_frame, gpkg_frame):
        assert g.crs == pyproj.CRS.from_epsg(32633)
        assert g.crs.to_epsg() == 32633
        _check_frame(g, geo.n, "m2")
    a = pq_frame.set_index("object_id").sort_index()
    b = gpkg_frame.set_index("object_id").sort_index()
    assert (a.index == b.index).all()
    np.testing.assert_allclose(a["area"], b["area"])
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=1e-6).all()
    np.testing.assert_allclose(a.geometry.area, a["area"], rtol=1e-9)


def test_geoparquet_metadata_georeferenced(geo):
    import pyarrow.parquet as pq
    import pyproj

    f = pq.ParquetFile(geo.parquet)
    meta = json.loads(f.schema_arrow.metadata[b"geo"])
    assert meta["version"] == "1.1.0" and meta["primary_column"] == "geometry"
    col = meta["columns"]["geometry"]
    assert col["encoding"] == "WKB"
    assert col["covering"]["bbox"] == {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}
    assert pyproj.CRS.from_json_dict(col["crs"]).to_epsg() == 32633
    assert geo.summary["crs"] is not None and pyproj.CRS.from_json_dict(geo.summary["crs"]).to_epsg() == 32633


def test_geoparquet_microscopy_has_engineering_crs(micro):
    import geopandas as gpd
    import pyarrow.parquet as pq
    import pyproj

    meta = json.loads(pq.ParquetFile(micro.parquet).schema_arrow.metadata[b"geo"])
    crs_json = meta["columns"]["geometry"].get("crs")
    assert crs_json is not None, "an omitted crs means OGC:CRS84 (lon/lat) to readers"
    crs = pyproj.CRS.from_json_dict(crs_json)
    assert crs.type_name == "Engineering CRS" and not crs.is_geographic and not crs.is_projected, crs.type_name
    g = gpd.read_parquet(micro.parquet)
    assert g.crs == crs
    _check_frame(g, micro.n, "um2")
    # 0.5 µm pixels: area in µm² is a quarter of the polygon's area in pixels
    np.testing.assert_allclose(g["area"], g.geometry.area * 0.25, rtol=1e-9)
    gk = gpd.read_file(micro.gpkg, layer="objects")
    assert len(gk) == micro.n and (gk["area_unit"] == "um2").all()


# --------------------------------------------------------------------------------------------- QGIS
QGIS_SCRIPT = r"""
import json, sys
from qgis.core import QgsApplication, QgsFeatureSource, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
out = []
RASTERS = [p for p in sys.argv[1:] if p.endswith('.tif')]
for path in [p for p in sys.argv[1:] if not p.endswith('.tif')]:
    lyr = QgsVectorLayer(path + '|layername=objects', 'o', 'ogr')
    rec = {'valid': lyr.isValid(), 'count': lyr.featureCount(), 'authid': lyr.crs().authid(),
           'crs_valid': lyr.crs().isValid(), 'crs': lyr.crs().description()}
    if lyr.isValid():
        feats = list(lyr.getFeatures())
        rec['read'] = len(feats)
        rec['geos_valid'] = sum(1 for f in feats if f.geometry().isGeosValid())
        rec['object_ids'] = len({f['object_id'] for f in feats})
        rec['spatial_index'] = lyr.dataProvider().hasSpatialIndex() == QgsFeatureSource.SpatialIndexPresent
        rec['fields'] = lyr.fields().names()
        e = lyr.extent()
        rec['extent'] = [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()]
        # the default style QGIS applied on load (GeoPackage layer_styles, useAsDefault)
        r = lyr.renderer()
        rec['renderer'] = r.type()
        if r.type() == 'categorizedSymbol':
            rec['attr'] = r.classAttribute()
            rec['categories'] = [[c.value(), c.symbol().symbolLayer(0).layerType(),
                                  c.symbol().symbolLayer(0).strokeColor().name(),
                                  int(c.symbol().symbolLayer(0).brushStyle())] for c in r.categories()]
    out.append(rec)
    del lyr
for path in RASTERS:
    from qgis.core import QgsRasterLayer
    lyr = QgsRasterLayer(path, 'q', 'gdal')
    e = lyr.extent()
    out.append({'valid': lyr.isValid(), 'authid': lyr.crs().authid(), 'bands': lyr.bandCount(),
                'extent': [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()], 'width': lyr.width()})
    del lyr
print('QGIS-RESULT ' + json.dumps(out), flush=True)
app.exitQgis()
"""


def _qgis_open(tmp: Path, *paths: Path) -> list[dict]:
    env = _client_env(tmp)
    _need_system_module("qgis.core", "python3-qgis (with qgis-providers for the ogr provider)", env)
    r = _run([SYSTEM_PYTHON, "-c", QGIS_SCRIPT, *map(str, paths)], env=env, cwd=tmp)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("QGIS-RESULT ")]
    assert r.returncode == 0 and lines, f"QGIS failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(lines[-1][len("QGIS-RESULT "):])


def test_qgis_opens_gpkg(geo, micro, tmp_path):
    g, m = _qgis_open(tmp_path, geo.gpkg, micro.gpkg)
    assert g["valid"], g
    assert (g["count"], g["read"], g["object_ids"], g["geos_valid"]) == (geo.n,) * 4, g
    assert g["authid"] == "EPSG:32633" and g["crs_valid"], g
    assert g["spatial_index"], g
    assert {"object_id", "class", "score", "area", "area_unit"} <= set(g["fields"]), g
    assert m["valid"], m
    assert (m["count"], m["read"], m["object_ids"], m["geos_valid"]) == (micro.n,) * 4, m
    assert m["crs"] == "Undefined Cartesian SRS" and m["authid"] == "", m
    assert m["spatial_index"], m


def test_qgis_opens_layers_styled_and_places_the_quicklook(geo, tmp_path):
    """The GeoPackage's default style (layer_styles) is applied on load: a categorized renderer on `class`,
    outline colour per class and no fill — for the run's single class and for a two-class layer; and the
    quicklook COG lands on the objects' extent in the same CRS."""
    import geopandas as gpd
    from shapely.geometry import box

    from pipeline.io.palette import PALETTE, hex_colour
    from pipeline.io.qgis_style import add_default_style

    two = tmp_path / "two.gpkg"
    gpd.GeoDataFrame({"object_id": [1, 2, 3], "class": ["tree", "building", "tree"]},
                     geometry=[box(0, 0, 1, 1), box(2, 2, 3, 3), box(4, 4, 5, 5)],
                     crs="EPSG:32633").to_file(two, layer="objects", driver="GPKG", VERSION="1.2")
    colours = add_default_style(two, model_classes=["building", "tree"])
    assert list(colours) == ["building", "tree"]
    cog = geo.root / "out" / "geo.quicklook.tif"
    g, t, q = _qgis_open(tmp_path, geo.gpkg, two, cog)
    assert g["renderer"] == "categorizedSymbol" and g["attr"] == "class", g
    assert g["categories"] == [["object", "SimpleFill", hex_colour(PALETTE[0]), 0]], g  # 0 = Qt.NoBrush
    assert t["renderer"] == "categorizedSymbol", t
    assert t["categories"] == [["building", "SimpleFill", hex_colour(PALETTE[0]), 0],
                               ["tree", "SimpleFill", hex_colour(PALETTE[1]), 0]], t
    assert q["valid"] and q["authid"] == "EPSG:32633" and q["bands"] == 3, q
    # the scene is 640 x 512 px of 0.5 m from (500000, 5000000): the quicklook covers exactly that
    np.testing.assert_allclose(q["extent"], [500000, 5000000 - HEIGHT * 0.5, 500000 + WIDTH * 0.5, 5000000], atol=1e-6)
    gx0, gy0, gx1, gy1 = g["extent"]
    assert q["extent"][0] <= gx0 and q["extent"][1] <= gy0 and q["extent"][2] >= gx1 and q["extent"][3] >= gy1


QGIS_OVERLAY = r"""
import json, sys
from qgis.core import QgsApplication, QgsPointXY, QgsRasterLayer, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
image, gpkg = sys.argv[1:3]
r = QgsRasterLayer(image, 'image', 'gdal')
v = QgsVectorLayer(gpkg + '|layername=objects', 'objects', 'ogr')
e, f = r.extent(), v.extent()
prov = r.dataProvider()
def sample(x, y):
    val, ok = prov.sample(QgsPointXY(x, y), 1)
    return val if ok else None
inside, mirrored = [], []
for ft in v.getFeatures():
    p = ft.geometry().pointOnSurface().asPoint()
    inside.append(sample(p.x(), p.y()))
    mirrored.append(sample(p.x(), e.yMinimum() + e.yMaximum() - p.y()))  # the same point, image upside down
print('QGIS-RESULT ' + json.dumps({'raster': [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()],
      'vector': [f.xMinimum(), f.yMinimum(), f.xMaximum(), f.yMaximum()], 'inside': inside, 'mirrored': mirrored}),
      flush=True)
del prov, r, v  # layers go before the application, or QGIS crashes on exit
app.exitQgis()
"""


def test_qgis_draws_a_non_georeferenced_run_over_its_image_right_way_up(micro, tmp_path):
    """QGIS places an image without georeferencing at x = column, y = -row; the run's polygons must land on it,
    on the objects (brighter than the same points with the image turned upside down), not beside or mirrored."""
    env = _client_env(tmp_path)
    _need_system_module("qgis.core", "python3-qgis (with qgis-providers for the ogr provider)", env)
    r = _run([SYSTEM_PYTHON, "-c", QGIS_OVERLAY, str(micro.root / "micro.ome.tif"), str(micro.gpkg)], env=env, cwd=tmp_path)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("QGIS-RESULT ")]
    assert r.returncode == 0 and lines, f"QGIS failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    res = json.loads(lines[-1][len("QGIS-RESULT "):])
    assert res["raster"] == [0.0, -HEIGHT, WIDTH, 0.0], res["raster"]
    rx0, ry0, rx1, ry1 = res["raster"]
    vx0, vy0, vx1, vy1 = res["vector"]
    assert rx0 <= vx0 < vx1 <= rx1 and ry0 <= vy0 < vy1 <= ry1, res  # on the image
    inside = [v for v in res["inside"] if v is not None]
    mirrored = [v for v in res["mirrored"] if v is not None]
    assert len(inside) == micro.n, (len(inside), micro.n)  # every object samples the image
    assert np.mean(inside) > 1.5 * np.mean(mirrored), (np.mean(inside), np.mean(mirrored))  # right way up
