"""The reader interface (pipeline.io.sources) on real files made by other software (../shared/data/slides,
../shared/data/aerial) and on small pyramidal files made here with the vendors' metadata."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from helpers import shared

from pipeline.errors import InputError
from pipeline.io.sources import detect_reader, open_source, resolve_channels


def _slide(name: str) -> str:
    return str(shared("slides", name))


# ---------------------------------------------------------------------------------------------- real files

def test_aperio_svs_real():
    with open_source(_slide("CMU-1-Small-Region.svs")) as s:
        assert (s.reader, s.format) == ("openslide", "aperio")
        assert [(lv.height, lv.width) for lv in s.levels] == [(2967, 2220)]
        assert s.pixel_size == pytest.approx((0.499, 0.499)) and s.pixel_size_um == pytest.approx((0.499, 0.499))
        assert s.channel_names == ["red", "green", "blue"] and s.dtype == "uint8"
        a = s.read(0, 1000, 800, 64, 96)
        assert a.shape == (3, 64, 96) and a.std() > 5  # H&E tissue, not blank
        # tifffile decodes the same JPEG tiles: the same pixels through another library
        import tifffile

        with tifffile.TiffFile(_slide("CMU-1-Small-Region.svs")) as t:
            ref = t.series[0].asarray()[1000:1064, 800:896]
        assert np.abs(a.astype(int) - np.moveaxis(ref, 2, 0).astype(int)).max() <= 2


def test_hamamatsu_ndpi_real_levels_agree():
    with open_source(_slide("test3-DAPI-2-387.ndpi")) as s:
        assert (s.reader, s.format) == ("openslide", "hamamatsu")
        assert (s.height, s.width) == (4864, 3968)
        assert s.pixel_size_um == pytest.approx((0.22817, 0.22817), rel=1e-4)
        assert [lv.downsample for lv in s.levels][:4] == [1.0, 2.0, 4.0, 8.0]
        # a window at level 2 agrees with the same area of level 0 averaged 4x4 (JPEG, so loosely)
        lo = s.read(2, 300, 200, 64, 64, [2]).astype(float)[0]
        hi = s.read(0, 1200, 800, 256, 256, [2]).astype(float)[0].reshape(64, 4, 64, 4).mean(axis=(1, 3))
        assert np.corrcoef(lo.ravel(), hi.ravel())[0, 1] > 0.95
        assert np.abs(lo - hi).mean() < 4
        r, g, b = (s.read(3, 0, 0, 608, 496, [c]).mean() for c in range(3))
        assert b > 10 * max(r, g)  # DAPI rendered in blue: R = G ~ 0


def test_ome_tiff_real_bioformats_pyramid():
    p = _slide("minerva_2048x2048_ome6_tiled.ome.tif")
    assert detect_reader(p) == "tifffile"  # not GDAL/OpenSlide, which read only the first plane
    with open_source(p) as s:
        assert [(lv.height, lv.width, lv.downsample) for lv in s.levels] == [(2048, 2048, 1.0), (1024, 1024, 2.0)]
        assert s.count == 3 and s.dtype == "uint16"
        assert s.pixel_size is None  # PhysicalSizeXUnit="pixel": not a physical size
        a0 = s.read(0, 512, 512, 128, 128).astype(float)
        a1 = s.read(1, 256, 256, 64, 64).astype(float)
        assert a0.shape == (3, 128, 128) and a1.shape == (3, 64, 64)
        assert a0.std() > 0
        assert np.array_equal(a0[:, ::2, ::2], a1)  # Bio-Formats made level 1 by taking every other pixel


def test_ome_zarr_real_bioformats2raw_series():
    p = _slide("fake-series-2.zarr")
    assert detect_reader(p) == "zarr"
    for series in (0, 1):
        with open_source(p, series=series) as s:
            assert [(lv.height, lv.width, lv.downsample) for lv in s.levels] == [(512, 512, 1.0), (256, 256, 2.0)]
            assert s.count == 1 and s.dtype == "uint8" and s.pixel_size is None
            import zarr

            ref = zarr.open_array(f"{p}/{series}/1", mode="r")[0, 0, 0, 10:30, 20:60]
            assert np.array_equal(s.read(1, 10, 20, 20, 40)[0], ref)
    with pytest.raises(InputError, match=r"series 2 does not exist, the container has 2 \(0\.\.1\)"):
        open_source(p, series=2)


def test_gdal_geotiff_real_and_vrt_mosaic(tmp_path):
    whole = str(shared("aerial", "rasterio", "RGB.byte.tif"))
    parts = [str(shared("aerial", "rasterio", f"rgb{i}.tif")) for i in range(1, 5)]
    vrt = tmp_path / "mosaic.vrt"
    subprocess.run(["gdalbuildvrt", "-q", str(vrt), *parts], check=True)
    with open_source(whole) as a, open_source(str(vrt)) as b:
        assert (a.reader, b.reader, b.format) == ("gdal", "gdal", "VRT")
        import pyproj

        with open_source(parts[0]) as p1:  # the quadrants carry an unnamed copy of UTM 18N
            assert pyproj.CRS.from_wkt(p1.crs_wkt).equals(pyproj.CRS.from_wkt(b.crs_wkt))
        assert a.nodata == 0
        assert a.pixel_unit == "m" and a.pixel_size == pytest.approx((300.04, 300.04), abs=0.01)
        # the mosaic's pixels at the same map position equal the original scene's
        ta, tb = a.transform, b.transform
        col = int(round((tb[2] - ta[2]) / ta[0]))
        row = int(round((tb[5] - ta[5]) / ta[4]))
        h, w = min(b.height, a.height - row), min(b.width, a.width - col)
        assert np.array_equal(b.read(0, 0, 0, h, w), a.read(0, row, col, h, w))


# ------------------------------------------------------------------------------------------- channels

def test_channels_by_name_and_index_and_errors(tmp_path):
    p = _slide("CMU-1-Small-Region.svs")
    with open_source(p) as s:
        assert resolve_channels(s, ["Blue", 1]) == [2, 0]
        assert resolve_channels(s, None) is None
        with pytest.raises(InputError, match=r"channels: no channel named 'DAPI'; the image has 1='red', 2='green', 3='blue'"):
            resolve_channels(s, ["DAPI"])
        with pytest.raises(InputError, match=r"bands: 4 is out of range, the image has 3 channel\(s\)"):
            resolve_channels(s, [4], "bands")


def test_fsspec_urls_for_ome_tiff_and_ome_zarr(tmp_path):
    """Read in place through fsspec: an OME-TIFF inside a zip (detected as OME, not handed to GDAL's first
    plane), and an OME-Zarr on an fsspec filesystem (memory://, as an object store would be)."""
    import zipfile

    import fsspec

    ome = _slide("minerva_2048x2048_ome6_tiled.ome.tif")
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(ome, "slide.ome.tif")
    url = f"zip://slide.ome.tif::file://{archive}"
    assert detect_reader(url) == "tifffile"
    with open_source(url) as a, open_source(ome) as b:
        assert a.count == 3 and len(a.levels) == 2
        assert np.array_equal(a.read(1, 100, 200, 32, 48), b.read(1, 100, 200, 32, 48))
    fs = fsspec.filesystem("memory")
    fs.put(_slide("fake-series-2.zarr"), "/readers_test/f.zarr", recursive=True)
    try:
        with open_source("memory:///readers_test/f.zarr", series=1) as z, open_source(_slide("fake-series-2.zarr"), series=1) as ref:
            assert z.reader == "zarr" and np.array_equal(z.read(0, 5, 7, 40, 30), ref.read(0, 5, 7, 40, 30))
    finally:
        fs.rm("/readers_test", recursive=True)


def test_tissue_mask_on_the_real_he_slide():
    """Brightfield: Otsu on saturation of the low-resolution overview finds the H&E tissue of the real SVS and
    leaves the glass (its left and right margins) out."""
    from pipeline.stages.inputs import overview
    from pipeline.stages.skipping import tissue_mask

    with open_source(_slide("CMU-1-Small-Region.svs")) as s:
        ov, valid, down = overview(s, max_px=1024)
        mask, info = tissue_mask(ov, valid, "auto", s.pixel_size_um[0] * down)
    assert info["method"] == "saturation" and 0.3 < info["tissue_fraction"] < 0.6
    h, w = mask.shape
    assert mask[h // 2 - 20 : h // 2 + 20, w // 2 - 20 : w // 2 + 20].mean() > 0.9  # the tissue band
    assert mask[h // 2 :, : w // 8].mean() < 0.05  # glass on the left, below the thin strand
