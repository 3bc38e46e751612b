"""ONE reader interface for every input Seamline accepts: :func:`open_source` -> :class:`ImageSource`
(declared in :mod:`pipeline.io.readers.base`).

Whatever the format — a GeoTIFF/COG/VRT read by GDAL, a scanner slide read by OpenSlide, an OME-TIFF pyramid
read by tifffile, an OME-Zarr (NGFF) multiscale image read by zarr — the rest of the pipeline sees the same
things: the pyramid levels (shape and downsample factor of each), the physical pixel size of level 0, the
channel names, the dtype, nodata / a validity mask (alpha band, GDAL mask, slide alpha, NaN), the CRS and the
level-0 affine transform, and windowed reads ``read(level, row, col, h, w, channels) -> (channels, h, w)``.

Why one interface: the resolution rule (:mod:`pipeline.stages.resolution`), channel choice, tissue detection
and ingest must not know which library read the pixels, and each library misreads some formats (OpenSlide and GDAL both read an OME-TIFF pyramid as its first plane only), so the choice of backend is made
once, here, by content and not by file extension alone.

Backends live in :mod:`pipeline.io.readers`; a worker re-opens a source from its URL and ``reader`` name
(:func:`open_source` caches one open source per process), so only strings travel to Dask workers.
"""

from __future__ import annotations

import os
import threading
from typing import Sequence

from pipeline.errors import InputError, ParameterError
from pipeline.io import storage
from pipeline.io.readers.base import ImageSource
from pipeline.io.readers.gdal import GdalSource
from pipeline.io.readers.ometiff import OmeTiffSource
from pipeline.io.readers.omezarr import OmeZarrSource
from pipeline.io.readers.slide import SlideSource
from pipeline.io.storage import open_binary

__all__ = ["open_source", "detect_reader", "resolve_channels", "READERS"]

READERS = ("auto", "gdal", "openslide", "tifffile", "zarr")
BACKENDS: dict[str, type[ImageSource]] = {"gdal": GdalSource, "openslide": SlideSource, "tifffile": OmeTiffSource,
                                          "zarr": OmeZarrSource}


def _is_zarr(path: str) -> bool:
    p = path.rstrip("/")
    if p.lower().endswith(".zarr"):
        return True
    if not storage.is_url(path):
        lp = storage.local_path(p)
        return os.path.isdir(lp) and any(os.path.exists(os.path.join(lp, n)) for n in (".zattrs", "zarr.json", ".zgroup"))
    return False


_VENDORS = {"aperio", "hamamatsu", "philips", "leica", "ventana", "mirax", "sakura", "trestle", "dicom", "zeiss",
            "synthetic"}


def detect_reader(path: str) -> str:
    """Which backend reads ``path``: by content, not by extension (a .tif may be an OME-TIFF or an SVS).

    OME-Zarr folders -> zarr; vendor slide formats OpenSlide recognises (Aperio, Hamamatsu, Philips, ...)
    -> openslide; OME-TIFF -> tifffile (its OME-XML gives channels and the SubIFD pyramid, which GDAL and
    OpenSlide misread); everything else -> GDAL, which keeps every existing GeoTIFF/COG/VRT behaviour and
    bad-input message.
    """
    if _is_zarr(path):
        return "zarr"
    if storage.is_url(path):
        return "tifffile" if _looks_ome(path) else "gdal"
    lp = storage.local_path(path)
    if not os.path.isfile(lp) or os.path.getsize(lp) == 0:
        return "gdal"  # GDAL's checks give the established messages (missing, folder, empty)
    try:
        import openslide

        vendor = openslide.OpenSlide.detect_format(lp)
    except Exception:  # noqa: BLE001 - OpenSlide missing or unable to parse: not a slide it reads
        vendor = None
    if vendor in _VENDORS:
        return "openslide"
    return "tifffile" if _looks_ome(path) else "gdal"


def _looks_ome(path: str) -> bool:
    name = path.split("::")[0].split("?")[0].lower()
    if not name.endswith((".tif", ".tiff", ".btf", ".tf8")):
        return False
    try:
        import tifffile

        with open_binary(path) as fh, tifffile.TiffFile(fh) as tif:
            return bool(tif.is_ome)
    except Exception:  # noqa: BLE001 - not an OME-TIFF if tifffile cannot parse it
        return False


_CACHE: dict[tuple, ImageSource] = {}
_CACHE_LOCK = threading.Lock()


def open_source(url: str, reader: str = "auto", series: int | None = None, cache: bool = False) -> ImageSource:
    """Open ``url`` (a path or an fsspec URL) with the given backend ("auto": :func:`detect_reader`).

    ``series`` picks an image of a multi-image container (bioformats2raw OME-Zarr, OME-TIFF); default 0.
    ``cache=True`` keeps one open source per (url, reader, series) in this process (workers use it so that a
    slide is not re-opened for every block). Raises :class:`InputError` naming the file.
    """
    url = str(url)
    if reader not in READERS:
        raise ParameterError(f"reader: {reader!r} is not one of {', '.join(READERS)}; leave it at auto or pick one")
    key: tuple = (url, reader, series)
    if cache and not storage.is_url(url):
        try:  # a file rewritten under the same name is a new source (workers outlive one run)
            st = os.stat(storage.local_path(url))
            key += (st.st_size, st.st_mtime_ns)
        except OSError:
            pass
    if cache:
        with _CACHE_LOCK:
            src = _CACHE.get(key)
        if src is not None:
            return src
    if storage.is_url(url) and not cache:  # workers (cache=True) read what the driver already checked
        storage.probe(url, "input")  # one line for a refusing endpoint, no credentials, a 403 or a 404
    kind = detect_reader(url) if reader == "auto" else reader
    src = BACKENDS[kind](url, series)
    # rasterio keeps an fsspec opener in a context variable: a dataset opened through one in one Dask task
    # cannot be read in another task's context, so GDAL sources on URLs are never shared.
    if cache and not (kind == "gdal" and storage.is_url(url)):
        src.cached = True
        with _CACHE_LOCK:
            if len(_CACHE) > 8:
                for s in _CACHE.values():
                    s.close()
                _CACHE.clear()
            _CACHE[key] = src
    return src


def resolve_channels(source: ImageSource, spec: Sequence[str | int] | None, key: str = "channels") -> list[int] | None:
    """0-based channel indices from a config list of names and/or 1-based indices (as GDAL numbers bands).

    Names match the source's channel names case-insensitively (OME channel names, GDAL band descriptions,
    colour interpretations such as "red"). An unknown name or an index out of range is one line that lists
    what the image has. None = all channels.
    """
    if spec is None:
        return None
    names = source.channel_names
    listing = ", ".join(f"{i + 1}={n!r}" for i, n in enumerate(names))
    out = []
    for item in spec:
        if isinstance(item, bool):
            item = str(item)
        if isinstance(item, int) or (isinstance(item, str) and item.strip().isdigit()):
            i = int(item)
            if not 1 <= i <= len(names):
                raise InputError(f"input {source.url}: {key}: {i} is out of range, the image has {len(names)} "
                                 f"channel(s) numbered from 1: {listing}; pick one of those")
            out.append(i - 1)
            continue
        lowered = [n.lower() for n in names]
        if str(item).lower() not in lowered:
            raise InputError(f"input {source.url}: {key}: no channel named {item!r}; the image has {listing}; "
                             "use one of these names or a 1-based index")
        out.append(lowered.index(str(item).lower()))
    if not out:
        raise ParameterError(f"{key}: empty list; leave it out to use every channel or name at least one")
    return out
