"""Slides and scenes end to end through the reader interface: small pyramidal files made here with the
vendors' metadata (Aperio SVS via tifffile, generic tiled pyramidal TIFF, OME-TIFF with channel names), a
chosen pyramid level giving µm² areas, tiled == untiled after area averaging, tissue skipping, and nodata
skipping (rotated collar, alpha band, NaN) with no object ever on nodata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from pipeline.config import SegmentConfig
from pipeline.io.sources import open_source
from pipeline.runner import segment_scene

REPO = Path(__file__).resolve().parents[1]
SVS_DESC = "Aperio Image Library v10.0.51\r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = 0.5"


def discs(h: int, w: int, radius: float, step: int, margin: int = 0, value: int = 220) -> np.ndarray:
    """Bright discs on black on a regular lattice (uint8), ``margin`` px of lattice left empty on the left."""
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w), np.uint8)
    for cy in range(step // 2, h, step):
        for cx in range(margin + step // 2, w, step):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = value
    return img


def write_svs(path: Path, grey: np.ndarray, blue_only: bool = True) -> None:
    """An Aperio-style SVS: tiled JPEG pyramid (1, 2, 4), ImageDescription with AppMag and MPP = 0.5."""
    import tifffile

    rgb = np.stack([np.zeros_like(grey), np.zeros_like(grey), grey] if blue_only else [grey] * 3, axis=-1)
    with tifffile.TiffWriter(path) as tw:
        for d in (1, 2, 4):
            lv = rgb[::d, ::d]
            tw.write(lv, tile=(256, 256), photometric="rgb", compression="jpeg", compressionargs={"level": 95}, metadata=None,
                     description=SVS_DESC.format(w=lv.shape[1], h=lv.shape[0]))


@pytest.fixture(scope="module")
def svs(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("svs") / "cells.svs"
    write_svs(p, discs(1024, 768, 12, 48))
    return p


def test_built_slides_read_with_vendor_metadata(svs, tmp_path):
    import tifffile

    with open_source(str(svs)) as s:  # OpenSlide recognises the Aperio description
        assert (s.reader, s.format, s.pixel_size_um) == ("openslide", "aperio", (0.5, 0.5))
        assert [(lv.height, lv.width, lv.downsample) for lv in s.levels] == [(1024, 768, 1.0), (512, 384, 2.0), (256, 192, 4.0)]
        assert s.read(1, 12, 12, 1, 1)[:, 0, 0].tolist()[2] > 180  # a disc centre (24, 24) at level 1
    # generic tiled pyramidal TIFF (reduced-resolution IFDs): GDAL sees the pyramid as overviews
    gen = tmp_path / "generic.tif"
    img = discs(512, 512, 10, 64)
    with tifffile.TiffWriter(gen) as tw:
        for d, sft in ((1, 0), (2, 1), (4, 1)):
            tw.write(img[::d, ::d], tile=(128, 128), subfiletype=sft, compression="zlib")
    with open_source(str(gen)) as s:
        assert s.reader == "gdal" and [lv.downsample for lv in s.levels] == [1.0, 2.0, 4.0]
        assert np.array_equal(s.read(2, 0, 0, 128, 128)[0], img[::4, ::4])
    # OME-TIFF with named channels, SubIFD pyramid and a physical pixel size
    ome = tmp_path / "multi.ome.tif"
    data = np.stack([discs(256, 256, 8, 32), np.full((256, 256), 7, np.uint8)])
    with tifffile.TiffWriter(ome, ome=True) as tw:
        tw.write(data, subifds=1, tile=(128, 128), metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD3"]},
                                                              "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
        tw.write(data[:, ::2, ::2], subfiletype=1, tile=(128, 128))
    with open_source(str(ome)) as s:
        assert (s.reader, s.channel_names, s.pixel_size_um) == ("tifffile", ["DAPI", "CD3"], (0.65, 0.65))
        assert [lv.downsample for lv in s.levels] == [1.0, 2.0]
        assert np.array_equal(s.read(1, 0, 0, 64, 64, [1]), np.full((1, 64, 64), 7, np.uint8))


def _run_cli(inp: Path, out: Path, cfg: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    import yaml

    c = tmp_path / "cfg.yaml"
    c.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", DO_NOT_TRACK="1")
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "segment", str(inp), "--out", str(out), "--config",
                           str(c), "--workers", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # CLI runs
def test_segment_slide_at_a_chosen_level_gives_um2(svs, tmp_path):
    res = _run_cli(svs, tmp_path / "out", {"model": "classical", "tile": 256, "halo": 32, "resolution": {"level": 1}}, tmp_path)
    assert res.returncode == 0, res.stderr
    s = json.loads((tmp_path / "out" / "cells.json").read_text())
    assert (s["width"], s["height"], s["bands"]) == (384, 512, 1)  # level 1, the blue stain only
    assert s["source"]["level"] == 1 and s["source"]["stain"]["channel"] == "blue"
    assert s["pixel_size_um"] == [1.0, 1.0]
    g = gpd.read_parquet(tmp_path / "out" / "cells.parquet")
    assert len(g) == (1024 // 48) * (768 // 48)
    assert set(g.area_unit) == {"um2"}
    assert np.median(g["area"]) == pytest.approx(np.pi * 12 ** 2 * 0.25, rel=0.12)  # r = 12 px at 0.5 µm
    # polygons in level-0 pixel coordinates (x = column, y = -row): the first disc is centred at (24, 24) of level 0
    c = g.geometry.centroid
    assert min(np.hypot(c.x - 24, c.y + 24)) < 1.5
    # an unknown channel name is one clear line listing what there is
    bad = _run_cli(svs, tmp_path / "bad", {"model": "classical", "channels": ["DAPI"]}, tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "channels: no channel named 'DAPI'; the image has 1='red', 2='green', 3='blue'" in bad.stderr


def test_tiled_equals_untiled_after_area_averaging(svs, dask_client_session, tmp_path):
    # model at 0.75 µm/px on a 0.5 µm/px slide: level 0 resampled by 1.5 (non-integer)
    base = dict(model="classical", halo=48, resolution={"pixel_size": [0.75, "um"]})
    a = segment_scene(str(svs), tmp_path / "a", SegmentConfig(tile=96, **base), client=dask_client_session)
    b = segment_scene(str(svs), tmp_path / "b", SegmentConfig(tile=1024, **base), client=dask_client_session)
    assert a["source"]["resample"] == pytest.approx(1.5) and a["tiling"]["tiles"] > 20 and b["tiling"]["tiles"] == 1
    ga, gb = (gpd.read_parquet(s["outputs"]["parquet"]).sort_values("centroid_x") for s in (a, b))
    assert a["objects"] == b["objects"] == 336
    key = lambda g: sorted(zip(g.area_px, np.round(g.centroid_x, 6), np.round(g.centroid_y, 6)))  # noqa: E731
    assert key(ga) == key(gb)


@pytest.mark.slow  # a shipped-model run
def test_tissue_detection_skips_empty_tiles_before_the_model(tmp_path, dask_client_session):
    p = tmp_path / "half.svs"
    write_svs(p, discs(1024, 1024, 12, 48, margin=512))  # left half: empty glass (black: fluorescence)
    base = dict(model="classical", tile=128, halo=32)
    on = segment_scene(str(p), tmp_path / "on", SegmentConfig(tissue={"enabled": True, "min_fraction": 0.05}, **base),
                       client=dask_client_session)
    off = segment_scene(str(p), tmp_path / "off", SegmentConfig(tissue={"enabled": False}, **base), client=dask_client_session)
    # by default (tissue.enabled: auto) a slide gets it too, and the summary says why
    auto = segment_scene(str(p), tmp_path / "auto", SegmentConfig(tissue={"min_fraction": 0.05}, **base),
                         client=dask_client_session)
    assert auto["tissue"]["ran"] and auto["tissue"]["why"].startswith("auto: a slide")
    assert auto["tiles_skipped"] == on["tiles_skipped"] and auto["objects"] == on["objects"]
    assert off["tissue"] == {"ran": False, "why": "tissue.enabled: false"}
    assert on["tissue"]["method"] == "intensity"
    # columns 0-2 of 8 hold no tissue (column 3 holds the 20 µm rim the mask is grown by)
    assert on["tiles_skipped"]["tissue"] == 24 and on["tiles_skipped"]["fraction"] == 0.375
    assert on["tiles_processed"] == 64 - on["tiles_skipped"]["total"] and off["tiles_skipped"]["total"] == 0
    assert on["objects"] == off["objects"] > 100  # nothing lost: every object is on tissue


def _write_geotiff(path: Path, data: np.ndarray, **kw) -> None:
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:32633", transform=from_origin(500000, 4000000, 0.5, 0.5),
                       tiled=True, blockxsize=64, blockysize=64, **kw) as ds:
        ds.write(data)


def _objects_on(parquet: str, invalid: np.ndarray, transform) -> int:
    from helpers import rasterize_output

    lab = rasterize_output(parquet, invalid.shape, transform)
    return int((lab[invalid] > 0).sum())


@pytest.mark.parametrize("kind", ["collar", "alpha", "nan"])
def test_nodata_tiles_skipped_and_no_object_on_nodata(kind, tmp_path, dask_client_session):
    from rasterio.transform import from_origin

    n = 384
    img = discs(n, n, 6, 24).astype(np.uint16) * 10 + 100
    yy, xx = np.mgrid[:n, :n]
    c = n / 2
    invalid = np.abs(yy - c) + np.abs(xx - c) > n * 0.55  # a scene rotated by 45°: its collar fills the corners
    p = tmp_path / f"{kind}.tif"
    if kind == "collar":
        img[invalid] = 0
        _write_geotiff(p, img[None], nodata=0)
    elif kind == "alpha":  # bright discs under alpha 0 must not become objects
        rgb = np.repeat((img[None] // 10).astype(np.uint8), 3, axis=0)
        alpha = np.where(invalid, 0, 255).astype(np.uint8)[None]
        _write_geotiff(p, np.concatenate([rgb, alpha]), photometric="RGB", alpha="YES")
    else:
        f = img.astype(np.float32)
        f[invalid] = np.nan
        _write_geotiff(p, f[None])
    s = segment_scene(str(p), tmp_path / "out", SegmentConfig(model="classical", tile=64, halo=16),
                      client=dask_client_session)
    assert s["tiles_skipped"]["nodata"] == 4, s["tiles_skipped"]  # the four corner tiles are all collar
    assert s["objects"] > 50
    assert _objects_on(s["outputs"]["parquet"], invalid, from_origin(500000, 4000000, 0.5, 0.5)) == 0
