"""Raster input: open and validate a GeoTIFF/COG, TIFF/OME-TIFF, VRT or any other raster GDAL reads (PNG and
JPEG up to :data:`MAX_STREAM_PIXELS`), read its georeferencing and pixel size.

All reads are windowed (GDAL through rasterio): nothing here holds the whole raster. Paths may be local or
fsspec URLs (``s3://``, ``gs://``, ``memory://``, ...); remote files are read through fsspec file objects
that GDAL pulls ranges from, never downloaded whole.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

from pipeline.errors import InputError
from pipeline.io import storage
from pipeline.io.scene import SUPPORTED_DTYPES, SceneInfo
from pipeline.io.storage import open_binary
from pipeline.io.units import to_um

__all__ = ["open_raster", "inspect_raster", "check_dataset", "clean_nodata"]

#: Formats GDAL can only decode from the start (no tiles, no random access): every window re-reads the file up
#: to it, so they are taken up to a size that costs little (a NEON benchmark tile, a DSB2018 image, a photo)
#: and refused above it with the conversion to use. Every other raster format GDAL reads is read by windows.
STREAM_DRIVERS = ("PNG", "JPEG", "GIF", "WEBP")
MAX_STREAM_PIXELS = 64 * 2**20

def open_raster(path: str, **open_kwargs: Any):
    """Open with rasterio; fsspec URLs through an fsspec opener. Raises InputError naming the file.

    ``open_kwargs`` go to ``rasterio.open`` (e.g. ``overview_level`` to open one overview as a dataset)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    kwargs: dict[str, Any] = dict(open_kwargs)
    name = path  # what messages call the input: the path or URL as the user gave it
    path = storage.local_path(path)
    if storage.is_url(path):
        # One line for a refusing endpoint, missing credentials, a 403 or a 404, before GDAL sees the URL; the
        # probe also drops fsspec's cached listing: a scene replaced under the same key (a new version, as
        # `seamline watch` sees them) must not be read with the old size — GDAL aborts on that.
        if storage.probe(path, "input").get("type") == "directory":
            raise InputError(f"input {name}: is a folder (prefix), expected an image file; pass the image's URL itself")
        # The filesystem and the path inside it; chained URLs ("zip://a.tif::s3://bucket/b.zip") too.
        fs, path = storage.fs_path(path)
        kwargs["opener"] = fs
    else:
        if not os.path.exists(path):
            raise InputError(f"input {name}: file not found; check the path")
        if os.path.isdir(path):
            raise InputError(f"input {name}: is a folder, expected a GeoTIFF/TIFF file; pass the image file itself")
        if os.path.getsize(path) == 0:
            raise InputError(f"input {name}: file is empty (0 bytes); expected a GeoTIFF/TIFF image, re-copy or re-export it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = rasterio.open(path, **kwargs)
    except RasterioIOError as exc:
        first = str(exc).splitlines()[0][:160]
        raise InputError(f"input {name}: not a readable GeoTIFF/TIFF ({first}); pass a GeoTIFF, COG or (OME-)TIFF file") from None
    if ds.driver in STREAM_DRIVERS and ds.width * ds.height > MAX_STREAM_PIXELS:
        w, h, drv = ds.width, ds.height, ds.driver
        ds.close()
        raise InputError(f"input {name}: a {drv} of {w} x {h} px ({w * h / 1e6:.0f} Mpx) cannot be read by windows "
                         f"({drv} has no tiles), expected at most {MAX_STREAM_PIXELS / 1e6:.0f} Mpx in {drv}; convert it "
                         "with gdal_translate -of COG")
    return ds


def _pixel_size_from_tiff(path: str) -> tuple[float, float] | None:
    """Physical pixel size in µm from OME-XML or ImageJ metadata, else None."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover
        return None
    try:
        with open_binary(path) as fh, tifffile.TiffFile(fh) as tif:
            if tif.is_ome and tif.ome_metadata:
                return _ome_pixel_size(tif.ome_metadata)
            ij = tif.imagej_metadata
            if ij and "unit" in ij:
                page = tif.pages[0]
                xr = page.tags.get("XResolution")
                yr = page.tags.get("YResolution")
                unit = str(ij["unit"]).strip().lower()
                f = to_um(1.0, unit) or to_um(1.0, unit.replace("\\u00b5", "µ"))
                if xr is not None and yr is not None and f:
                    xpx = xr.value[0] / xr.value[1]
                    ypx = yr.value[0] / yr.value[1]
                    if xpx > 0 and ypx > 0:
                        return (f / xpx, f / ypx)
    except Exception:  # noqa: BLE001 - metadata is optional: a TIFF without it is still valid input
        return None
    return None


def _ome_pixel_size(xml: str) -> tuple[float, float] | None:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    for el in root.iter():
        if el.tag.endswith("}Pixels") or el.tag == "Pixels":
            sx, sy = el.get("PhysicalSizeX"), el.get("PhysicalSizeY")
            if sx is None or sy is None:
                return None
            # An unknown unit (OME allows "pixel", "reference frame") is not a physical size.
            ux = to_um(1.0, el.get("PhysicalSizeXUnit", "µm"))
            uy = to_um(1.0, el.get("PhysicalSizeYUnit", "µm"))
            if ux is None or uy is None:
                return None
            return (float(sx) * ux, float(sy) * uy)
    return None


def check_dataset(ds, path: str) -> str:
    """Reject what Seamline cannot process (empty, mixed or unsupported types, unreadable pixel data) with one
    line naming the file; returns the dtype. Reads two small windows to catch truncated files early."""
    if ds.width == 0 or ds.height == 0 or ds.count == 0:
        raise InputError(f"input {path}: image is empty ({ds.width}x{ds.height}, {ds.count} bands); expected at least 1x1 pixel")
    dtypes = set(ds.dtypes)
    if len(dtypes) != 1:
        raise InputError(f"input {path}: bands have different types {sorted(dtypes)}; convert to one type with gdal_translate -ot")
    dtype = ds.dtypes[0]
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(f"input {path}: unsupported pixel type {dtype}; expected one of {', '.join(SUPPORTED_DTYPES)} (convert with gdal_translate -ot Float32)")
    from rasterio.windows import Window as RWindow

    try:
        ds.read(1, window=RWindow(0, 0, min(16, ds.width), min(16, ds.height)))
        ds.read(window=RWindow(max(0, ds.width - 16), max(0, ds.height - 16), min(16, ds.width), min(16, ds.height)))
    except Exception as exc:  # noqa: BLE001 - rasterio raises RasterioIOError; GDAL may raise others for corrupt blocks
        detail = exc.__cause__ or exc  # rasterio's "Read failed. See previous exception" wraps GDAL's message
        first = str(detail).splitlines()[0][:160] if str(detail) else type(exc).__name__
        raise InputError(f"input {path}: pixel data cannot be read, the file looks truncated or corrupt ({first}); re-copy or re-export it") from None
    return dtype


def clean_nodata(nodata) -> float | None:
    if nodata is not None and isinstance(nodata, float) and math.isnan(nodata):
        return None  # NaN nodata is handled by float maths; JSON cannot hold NaN
    return nodata


def inspect_raster(path: str, pixel_size_um: tuple[float, float] | None = None) -> SceneInfo:
    """Validate a GDAL-readable raster and describe it at full resolution (all bands).

    The pipeline itself describes its input through :func:`pipeline.io.sources.open_source` and
    :func:`pipeline.stages.resolution.plan_input` (every format, levels, channels); this is the GDAL-only view
    kept for callers that want exactly that."""
    path = str(path)
    ds = open_raster(path)
    with ds:
        dtype = check_dataset(ds, path)
        crs_wkt = ds.crs.to_wkt() if ds.crs is not None else None
        t = ds.transform
        nodata = clean_nodata(ds.nodata)
        driver = ds.driver
        size = (ds.width, ds.height, ds.count)
    ps = pixel_size_um if pixel_size_um else (None if crs_wkt else _pixel_size_from_tiff(path))
    return SceneInfo(path, size[0], size[1], size[2], dtype, crs_wkt, (t.a, t.b, t.c, t.d, t.e, t.f), nodata, ps, driver)
