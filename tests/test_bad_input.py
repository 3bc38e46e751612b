"""Bad input gets one clear line, a non-zero exit, no outputs under final names, and untouched input data.

Every CLI case runs ``python -m pipeline.cli segment ...`` in a subprocess (argument lists, never a shell)
and checks: exit code 2 (SeamlineError), stderr is exactly one line ``seamline: error: ...`` naming the file
or parameter and a fix, no traceback, nothing at all left in ``--out`` (no ``<stem>.parquet/.gpkg/.json``,
no hidden temp files, no work folder), and the input file (sha256, mtime) and its folder unchanged.
All of these fail during validation, before a Dask cluster starts, so each costs well under a second;
only the final good run starts a LocalCluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import SegmentConfig
from pipeline.config_file import load_yaml_config
from pipeline.errors import CheckpointError, ConfigError, InputError, ParameterError, SeamlineError
from pipeline.io.raster import inspect_raster
from pipeline.io.scene import SUPPORTED_DTYPES
from pipeline.settings import check_model
from pipeline.stages.grid import validate_tiling

REPO = Path(__file__).resolve().parents[1]
OUTPUT_SUFFIXES = (".parquet", ".gpkg", ".json", ".geojson", ".zarr", ".csv", ".html", ".png", ".tif")


# ----------------------------------------------------------------------------------------------------------
# Inputs (each test builds its own copies under tmp_path: a shared file is never modified)


@pytest.fixture(scope="module")
def good_scene(tmp_path_factory) -> Path:
    """A valid tiled, deflate GeoTIFF of 600x600 (read-only for the tests: copy before changing it)."""
    from pipeline.synthetic import write_scene

    p = tmp_path_factory.mktemp("shared") / "scene600.tif"
    write_scene(p, 600, 600, seed=0)
    p.chmod(0o444)
    return p


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory) -> Path:
    from pipeline.synthetic import write_scene

    p = tmp_path_factory.mktemp("shared_small") / "tiny.tif"
    write_scene(p, 200, 300, seed=1)
    p.chmod(0o444)
    return p


def _write_gdal(path: Path, dtype: str, data: np.ndarray) -> None:
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                           dtype=dtype) as ds:
            ds.write(data, 1)


def make_missing(d: Path, shared: Path) -> Path:
    return d / "missing.tif"


def make_folder(d: Path, shared: Path) -> Path:
    p = d / "folder.tif"
    p.mkdir()
    return p


def make_empty(d: Path, shared: Path) -> Path:
    p = d / "empty.tif"
    p.write_bytes(b"")
    return p


def make_png(d: Path, shared: Path) -> Path:
    """A PNG larger than the stream formats' limit (PNG has no tiles: every window decodes from the top)."""
    from PIL import Image

    p = d / "picture.png"
    Image.fromarray(np.zeros((8200, 8200), np.uint8)).save(p)  # 67 Mpx, a few kB
    return p


def make_text_tif(d: Path, shared: Path) -> Path:
    p = d / "notes.tif"
    p.write_text("this is not an image\n" * 20)
    return p


def make_truncated(d: Path, shared: Path) -> Path:
    p = d / "truncated.tif"
    shutil.copyfile(shared, p)  # copy first: the shared scene stays intact
    size = p.stat().st_size
    with open(p, "r+b") as fh:
        fh.truncate(int(size * 0.6))
    return p


def make_zero_size(d: Path, shared: Path) -> Path:
    # GDAL refuses to write a 0x0 raster ("Attempt to create 0x0 dataset is illegal") and a 0-band GTiff
    # ("width, height and bands must be positive"), so neither can be made with rasterio. tifffile does
    # write a real TIFF whose IFD declares ImageWidth = ImageLength = 0; GDAL refuses to open that one, so
    # Seamline reports it as unreadable. (inspect_raster's own "image is empty" check guards drivers that
    # do open such files; it cannot be reached with GDAL here without faking a dataset.)
    import tifffile

    p = d / "zero.tif"
    with pytest.warns(UserWarning, match="zero-size array"):  # tifffile: "nonconformant TIFF", as intended
        tifffile.imwrite(p, np.zeros((0, 0), np.uint8))
    with tifffile.TiffFile(p) as tif:
        assert tif.pages[0].tags["ImageWidth"].value == 0 and tif.pages[0].tags["ImageLength"].value == 0
    return p


def make_int8(d: Path, shared: Path) -> Path:
    assert "int8" not in SUPPORTED_DTYPES
    p = d / "int8.tif"
    _write_gdal(p, "int8", np.full((32, 32), -3, np.int8))
    return p


def make_complex(d: Path, shared: Path) -> Path:
    assert "complex64" not in SUPPORTED_DTYPES
    p = d / "complex.tif"
    _write_gdal(p, "complex64", (np.ones((32, 32)) + 1j).astype(np.complex64))
    return p


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _digest(p: Path) -> tuple[str, int, int]:
    st = p.stat()
    return hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size


def _snapshot(paths: list[Path]) -> dict:
    """Bytes and mtime of every input file, and the listing of every input's folder (no sidecars added)."""
    snap = {}
    for p in paths:
        if p.is_file():
            snap[str(p)] = _digest(p)
        elif p.is_dir():
            snap[str(p)] = ("dir", sorted(x.name for x in p.iterdir()))
        else:
            snap[str(p)] = None
        if p.parent.is_dir():
            snap[f"{p.parent}/"] = sorted(x.name for x in p.parent.iterdir())
    return snap


def _leftovers(out: Path) -> list[str]:
    if not out.exists():
        return []
    return sorted(str(x.relative_to(out)) for x in out.rglob("*"))


def run_cli(inputs: list[Path], out: Path, *extra: str, model: str = "classical",
            timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.cli", "segment", *[str(p) for p in inputs], "--out", str(out),
           "--model", model, "--workers", "1", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", DO_NOT_TRACK="1")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def assert_clean_failure(res: subprocess.CompletedProcess, out: Path, before: dict, inputs: list[Path],
                         names: list[str], fix: str) -> str:
    err = res.stderr
    assert res.returncode == 2, f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert last.startswith("seamline: error: "), err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    for name in names:
        assert name in last, f"{name!r} not named in: {last}"
    assert re.search(fix, last), f"no fix ({fix!r}) in: {last}"
    # No outputs under final names, no hidden temp files, no work folder: nothing at all in --out.
    finals = [x for x in (out.glob("*") if out.exists() else []) if x.suffix in OUTPUT_SUFFIXES]
    assert not finals, finals
    assert _leftovers(out) == [], _leftovers(out)
    assert _snapshot(inputs) == before, "input data or its folder changed"
    return last


# ----------------------------------------------------------------------------------------------------------
# CLI: bad input files

BAD_FILES = {
    # id: (builder, words the message must contain besides the file name, fix pattern)
    "missing": (make_missing, ["not found"], r"check the path"),
    "folder": (make_folder, ["is a folder"], r"pass the image file"),
    "empty_file": (make_empty, ["empty (0 bytes)"], r"re-copy or re-export"),
    "png": (make_png, ["a PNG of 8200 x 8200 px", "cannot be read by windows", "at most 67 Mpx"],
            r"convert it with gdal_translate -of COG"),
    "text_named_tif": (make_text_tif, ["not a readable GeoTIFF/TIFF"], r"pass a GeoTIFF, COG or \(OME-\)TIFF"),
    "truncated": (make_truncated, ["truncated or corrupt"], r"re-copy or re-export"),
    "zero_size": (make_zero_size, ["not a readable GeoTIFF/TIFF"], r"pass a GeoTIFF, COG or \(OME-\)TIFF"),
    "int8": (make_int8, ["unsupported pixel type int8", "uint16"], r"convert with gdal_translate -ot"),
    "complex64": (make_complex, ["unsupported pixel type complex64", "uint16"], r"convert with gdal_translate -ot"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_cli_bad_input_file(case, tmp_path, good_scene):
    build, words, fix = BAD_FILES[case]
    d = tmp_path / "in"
    d.mkdir()
    src = build(d, good_scene)
    out = tmp_path / "out"
    out.mkdir()
    before = _snapshot([src])
    res = run_cli([src], out)
    assert_clean_failure(res, out, before, [src], [src.name, *words], fix)
    assert _digest(good_scene)  # still readable; the shared scene is read-only and never touched


# ----------------------------------------------------------------------------------------------------------
# CLI: bad configs, parameters and models

CONFIGS = {
    # id: (YAML text or None for a missing file, words, fix)
    "unknown_key": ("tilee: 512\n", ["unknown config key 'tilee'"], r"remove it or fix its spelling"),
    "wrong_type": ("tile: big\n", ["'tile'", "valid integer", "'big'"], r"fix the value"),
    "missing_file": (None, ["not found"], r"pass an existing YAML file"),
    "invalid_yaml": ("tile: [512, 64\nhalo: 16\n", ["not valid YAML", "line "], r"fix the syntax"),
    "halo_ge_tile_in_file": ("tile: 256\nhalo: 300\n", ["--halo (300)", "--tile (256)"], r"lower the halo"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_cli_bad_config(case, tmp_path, small_scene):
    text, words, fix = CONFIGS[case]
    cfg = tmp_path / "cfg" / f"{case}.yaml"
    cfg.parent.mkdir()
    if text is not None:
        cfg.write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    watched = [small_scene, cfg]
    before = _snapshot(watched)
    res = run_cli([small_scene], out, "--config", str(cfg))
    last = assert_clean_failure(res, out, before, watched, [cfg.name, *words], fix)
    assert "(top level)" not in last and "Value error" not in last, last


FLAGS = {
    "tile_zero": (["--tile", "0"], ["--tile", "got 0"], r"use e\.g\. --tile 1024"),
    "tile_negative": (["--tile", "-5"], ["--tile", "got -5"], r"use e\.g\. --tile 1024"),
    "halo_eq_tile": (["--halo", "256", "--tile", "256"], ["--halo (256)", "--tile (256)"], r"lower the halo"),
    "halo_negative": (["--halo", "-1"], ["--halo", "got -1"], r"use e\.g\. --halo 64"),
}


@pytest.mark.parametrize("case", list(FLAGS))
def test_cli_bad_tiling_flags(case, tmp_path, small_scene):
    flags, words, fix = FLAGS[case]
    out = tmp_path / "out"
    out.mkdir()
    before = _snapshot([small_scene])
    res = run_cli([small_scene], out, *flags)
    last = assert_clean_failure(res, out, before, [small_scene], words, fix)
    assert "(top level)" not in last and "Value error" not in last, last


def _garbage_checkpoint(d: Path) -> Path:
    """A checkpoint whose metadata is valid but whose weights are junk bytes."""
    from pipeline.models.network import default_architecture

    d.mkdir(parents=True, exist_ok=True)
    md = {"format_version": 1, **default_architecture(), "postprocess": {}, "classes": ["nucleus"]}
    (d / "broken.json").write_text(json.dumps(md))
    (d / "broken.safetensors").write_bytes(b"\x93NUMPY not safetensors \x00\xff" * 40)
    return d / "broken"


def test_cli_nonexistent_model(tmp_path, small_scene):
    out = tmp_path / "out"
    out.mkdir()
    before = _snapshot([small_scene])
    res = run_cli([small_scene], out, model="/nonexistent/ckpt")
    assert_clean_failure(res, out, before, [small_scene], ["--model /nonexistent/ckpt", "ckpt.safetensors"],
                         r"pass 'classical', 'default', 'nuclei', 'nuclei-he', 'buildings', 'trees', or a path")


def test_cli_garbage_checkpoint(tmp_path, small_scene):
    stem = _garbage_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "out"
    out.mkdir()
    watched = [small_scene, stem.with_suffix(".json"), stem.with_suffix(".safetensors")]
    before = _snapshot(watched)
    res = run_cli([small_scene], out, model=str(stem))
    assert_clean_failure(res, out, before, watched, ["broken.safetensors", "not a readable safetensors file"],
                         r"re-copy it or re-save it")


def test_cli_batch_second_input_missing(tmp_path, small_scene):
    d = tmp_path / "in"
    d.mkdir()
    first = d / "first.tif"
    shutil.copyfile(small_scene, first)
    second = d / "second.tif"
    out = tmp_path / "out"
    out.mkdir()
    before = _snapshot([first, second])
    res = run_cli([first, second], out)
    assert_clean_failure(res, out, before, [first, second], ["second.tif", "not found"], r"check the path")
    assert not (out / "first.parquet").exists() and not (out / "first.json").exists()


@pytest.mark.slow  # CLI runs
def test_cli_good_run_after_failures(tmp_path, small_scene):
    """Failures into an out dir leave nothing behind, and a good run into the same dir then works."""
    out = tmp_path / "out"
    d = tmp_path / "in"
    d.mkdir()
    scene = d / "tiny.tif"
    shutil.copyfile(small_scene, scene)
    before = _snapshot([scene])
    # Fails into the same (not yet existing) out dir first: bad flag, then a missing second input.
    res = run_cli([scene], out, "--tile", "128", "--halo", "128")
    assert_clean_failure(res, out, before, [scene], ["--halo (128)"], r"lower the halo")
    res = run_cli([scene, d / "nope.tif"], out, "--tile", "128", "--halo", "16")
    assert_clean_failure(res, out, before, [scene], ["nope.tif"], r"check the path")

    res = run_cli([scene], out, "--tile", "128", "--halo", "16")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    names = sorted(x.name for x in out.iterdir())
    assert names == ["summary.csv", "summary.parquet", "tiny.gpkg", "tiny.html", "tiny.json", "tiny.ome.zarr",
                     "tiny.parquet", "tiny.quicklook.png", "tiny.quicklook.tif", "tiny.qupath.geojson"], names  # no temp files, no work folder
    summary = json.loads((out / "tiny.json").read_text())
    assert summary["objects"] > 0
    assert summary["tiling"]["tile"] == 128 and summary["tiling"]["halo"] == 16
    assert _snapshot([scene]) == before


# ----------------------------------------------------------------------------------------------------------
# Direct API


@pytest.mark.parametrize("case, match", [
    ("missing", r"missing\.tif: file not found; check the path"),
    ("folder", r"folder\.tif: is a folder"),
    ("empty_file", r"empty\.tif: file is empty \(0 bytes\)"),
    ("png", r"picture\.png: a PNG of 8200 x 8200 px \(67 Mpx\) cannot be read by windows"),
    ("text_named_tif", r"notes\.tif: not a readable GeoTIFF/TIFF"),
    ("truncated", r"truncated\.tif: pixel data cannot be read, the file looks truncated or corrupt \(.*IReadBlock"),
    ("zero_size", r"zero\.tif: not a readable GeoTIFF/TIFF"),
    ("int8", r"int8\.tif: unsupported pixel type int8; expected one of uint8"),
    ("complex64", r"complex\.tif: unsupported pixel type complex64"),
])
def test_inspect_raster_rejects(case, match, tmp_path, good_scene):
    src = BAD_FILES[case][0](tmp_path, good_scene)
    before = _snapshot([src])
    with pytest.raises(InputError, match=match) as ei:
        inspect_raster(str(src))
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, SeamlineError)
    assert "\n" not in str(ei.value)
    assert _snapshot([src]) == before


def test_inspect_raster_accepts_good_scene(good_scene):
    before = _digest(good_scene)
    info = inspect_raster(str(good_scene))
    assert (info.width, info.height, info.count, info.dtype) == (600, 600, 1, "uint16")
    assert _digest(good_scene) == before


@pytest.mark.parametrize("tile, halo, match", [
    (0, 0, r"--tile must be a positive number of pixels, got 0"),
    (-5, 0, r"--tile must be a positive number of pixels, got -5"),
    (512.0, 64, r"--tile must be a positive number of pixels, got 512\.0"),
    (256, 256, r"--halo \(256\) must be smaller than --tile \(256\)"),
    (256, 300, r"--halo \(300\) must be smaller than --tile \(256\)"),
    (512, -1, r"--halo must be zero or a positive number of pixels, got -1"),
])
def test_validate_tiling_rejects(tile, halo, match):
    with pytest.raises(ParameterError, match=match):
        validate_tiling(tile, halo)


@pytest.mark.parametrize("tile, halo", [(1, 0), (256, 255), (1024, 64)])
def test_validate_tiling_accepts(tile, halo):
    assert validate_tiling(tile, halo) is None


@pytest.mark.parametrize("text, match", [
    ("tilee: 512\n", r"unknown config key 'tilee'; remove it or fix its spelling"),
    ("tile: big\n", r"config key 'tile': .*valid integer.*found 'big'.*fix the value"),
    ("tile: [512, 64\n", r"not valid YAML at line 2, column 1 .*fix the syntax"),
    ("- just\n- a list\n", r"expected a mapping of keys, found list"),
    ("tile: 128\nhalo: 128\n", r"c\.yaml: --halo \(128\) must be smaller than --tile \(128\)"),
])
def test_load_yaml_config_rejects(text, match, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_yaml_config(p, SegmentConfig)


def test_load_yaml_config_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: not found; pass an existing YAML file"):
        load_yaml_config(tmp_path / "nope.yaml", SegmentConfig)


def test_check_model_rejects_garbage_and_missing(tmp_path):
    stem = _garbage_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"broken\.safetensors: not a readable safetensors file"):
        check_model(str(stem))
    with pytest.raises(CheckpointError, match=r"--model /nonexistent/ckpt: no checkpoint there"):
        check_model("/nonexistent/ckpt")
    assert check_model("classical") == ("classical", None)


@pytest.mark.slow  # three CLI runs
def test_png_and_jpeg_tiles_segment_like_the_same_tiff(tmp_path):
    """NEON benchmark tiles and DSB2018 images are PNGs: a PNG (and a JPEG) under the stream-format limit is
    read like any raster GDAL reads — the same objects as the same pixels in a TIFF, no georeferencing — and a
    reader that closes the pipe early (`| head`) gets no traceback."""
    import json

    import geopandas as gpd
    import rasterio
    from helpers import shared

    with rasterio.open(shared("aerial", "deepforest", "OSBS_029.tif")) as ds:
        rgb = ds.read()
    paths = {}
    for driver, ext in (("GTiff", "tif"), ("PNG", "png"), ("JPEG", "jpg")):
        paths[ext] = tmp_path / f"tile_{ext}.{ext}"
        with rasterio.open(paths[ext], "w", driver=driver, width=400, height=400, count=3, dtype="uint8",
                           **({"quality": 100} if driver == "JPEG" else {})) as out:
            out.write(rgb)
    res = run_cli([paths["tif"], paths["png"], paths["jpg"]], tmp_path / "out", "--quiet")
    assert res.returncode == 0, res.stderr
    frames = {ext: gpd.read_parquet(tmp_path / "out" / f"tile_{ext}.parquet") for ext in paths}
    assert len(frames["tif"]) > 20
    assert len(frames["png"]) == len(frames["tif"])
    assert sorted(frames["png"].area.round(3)) == sorted(frames["tif"].area.round(3))
    assert abs(len(frames["jpg"]) - len(frames["tif"])) <= 0.2 * len(frames["tif"])  # lossy, but the same scene
    summary = json.loads((tmp_path / "out" / "tile_png.json").read_text())
    assert summary["source"]["format"] == "PNG" and summary["crs"] is None

    env = dict(os.environ, HF_HUB_OFFLINE="1", DO_NOT_TRACK="1")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "segment", str(paths["png"]), "--out",
                             str(tmp_path / "out2"), "--model", "classical", "--workers", "1", "--quiet"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything is printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert (tmp_path / "out2" / "tile_png.parquet").is_file()  # published before printing
