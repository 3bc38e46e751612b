"""``seamline view``: the run's image and objects in a real napari window (PyQt5, software OpenGL on a
virtual X display from Debian's xvfb; Qt's ``offscreen`` platform gives vispy no OpenGL context here), saved
as a screenshot; and the one-line error when napari is not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # napari under Xvfb

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from pipeline.synthetic import write_scene

    root = tmp_path_factory.mktemp("view")
    write_scene(root / "v.tif", 300, 360, seed=8, crs="EPSG:32633")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "segment", str(root / "v.tif"), "--out", str(root / "out"),
                        "--model", "classical", "--tile", "256", "--workers", "1", "--quiet", "--no-report"],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (root / "out" / "v.html").exists(), "--no-report skips the report"
    return root


def test_view_in_napari_screenshot(run, tmp_path):
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        pytest.fail("xvfb-run not found: run .ci/install-clients.sh (apt-get install --no-install-recommends xvfb xauth)")
    try:
        import napari  # noqa: F401
    except ImportError:
        pytest.fail("napari is not installed: pip install -e '.[test]' (napari[pyqt5])")
    shot = tmp_path / "napari.png"
    env = {**ENV, "QT_QPA_PLATFORM": "xcb", "XDG_RUNTIME_DIR": str(tmp_path)}
    r = subprocess.run([xvfb, "-a", "-s", "-screen 0 1280x1024x24", sys.executable, "-m", "pipeline.cli", "view",
                        str(run / "out" / "v"), "--screenshot", str(shot)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and shot.exists(), r.stderr[-3000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert min(img.shape[:2]) > 200
    outline = (img[..., 0] > 180) & (img[..., 1] > 150) & (img[..., 2] < 120)  # yellow class outlines
    grey = (np.abs(img[..., 0] - img[..., 2]) < 10) & (img[..., 0] > 120)  # bright objects of the image
    assert outline.sum() > 500 and grey.sum() > 500, (outline.sum(), grey.sum())


def test_view_without_napari_is_one_clear_line(run, tmp_path):
    blocker = tmp_path / "nonapari"
    blocker.mkdir()
    (blocker / "napari.py").write_text("raise ImportError('No module named napari')\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(blocker), ENV.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(run / "out" / "v")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "napari" in r.stderr and "pip install 'seamline[view]'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "view", str(run / "out" / "nope")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and "no run summary" in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert json.loads((run / "out" / "v.json").read_text())["objects"] > 10


NAPARI_OPEN = """
import json, sys
import numpy as np, napari
v = napari.Viewer(show=False)
v.open(sys.argv[1], plugin="napari-ome-zarr")
out = []
for layer in v.layers:
    levels = list(layer.data) if layer.multiscale else [layer.data]
    out.append({"type": type(layer).__name__, "levels": len(levels), "shape": list(levels[0].shape),
                "ids": np.unique(np.asarray(levels[0])).tolist()})
v.close()
print("RESULT" + json.dumps(out))
"""


def test_label_image_opens_in_napari_ome_zarr(run, tmp_path):
    """The OME-Zarr label image opens in napari through its napari-ome-zarr reader (as the README says:
    ``napari OUT/<stem>.ome.zarr/labels``) as a multiscale Labels layer whose ids are the GeoParquet's."""
    import geopandas as gpd

    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        pytest.fail("xvfb-run not found: run .ci/install-clients.sh (apt-get install --no-install-recommends xvfb xauth)")
    env = {**ENV, "QT_QPA_PLATFORM": "xcb", "XDG_RUNTIME_DIR": str(tmp_path)}
    r = subprocess.run([xvfb, "-a", "-s", "-screen 0 1280x1024x24", sys.executable, "-c", NAPARI_OPEN,
                        str(run / "out" / "v.ome.zarr" / "labels")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "RESULT" in r.stdout, r.stderr[-3000:]
    (layer,) = json.loads(r.stdout.split("RESULT", 1)[1])
    import rasterio

    with rasterio.open(run / "v.tif") as ds:
        assert layer["type"] == "Labels" and layer["levels"] >= 1 and layer["shape"] == [ds.height, ds.width]
    ids = set(gpd.read_parquet(run / "out" / "v.parquet").object_id.tolist())
    assert set(layer["ids"]) - {0} == ids and len(ids) > 20


def test_view_layers_for_a_real_slide_through_its_own_reader(dask_client_session, tmp_path):
    """The real Aperio SVS (read by OpenSlide, not GDAL): ``seamline view`` builds its layers through the run's
    reader — the full-resolution image as a lazy pyramid whose pixels are the slide's, and the objects over it.
    napari's ViewerModel (no window, no OpenGL) holds the layers the window would show. A distributed Client is
    the default scheduler here (as in a notebook that has one): the lazy reads must travel to its workers."""
    from helpers import shared
    from napari.components import ViewerModel

    from pipeline.io.sources import open_source
    from pipeline.report.view import add_scene_layers, find_summary

    svs = shared("slides", "CMU-1-Small-Region.svs")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "segment", str(svs), "--out", str(tmp_path / "out"),
                        "--model", "classical", "--workers", "1", "--quiet", "--no-report"],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = find_summary(tmp_path / "out" / "CMU-1-Small-Region")
    assert summary["source"]["reader"] == "openslide"
    viewer = ViewerModel()
    add_scene_layers(viewer, summary)
    images = [ly for ly in viewer.layers if ly.__class__.__name__ == "Image"]
    shapes = [ly for ly in viewer.layers if ly.__class__.__name__ in ("Shapes", "Points")]
    assert len(images) == 3 and len(shapes) == 1  # red, green, blue + the objects
    with open_source(str(svs)) as src:
        full = images[0].data[0] if images[0].multiscale else images[0].data
        assert full.shape == (src.height, src.width)
        np.testing.assert_array_equal(np.asarray(full[1000:1064, 1500:1600]), src.read(0, 1000, 1500, 64, 100, [0])[0])
    assert len(shapes[0].data) == summary["objects"]
