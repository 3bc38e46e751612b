"""ONE reader interface for every input Seamline accepts: :func:`open_source` -> :class:`ImageSource`.

Whatever the format — a GeoTIFF/COG/VRT read by GDAL, a scanner slide read by OpenSlide, an OME-TIFF pyramid
read by tifffile, an OME-Zarr (NGFF) multiscale image read by zarr — the rest of the pipeline sees the same
things: the pyramid levels (shape and downsample factor of each), the physical pixel size of level 0, the
channel names, the dtype, nodata / a validity mask (alpha band, GDAL mask, slide alpha, NaN), the CRS and the
level-0 affine transform, and windowed reads ``read(level, row, col, h, w, channels) -> (channels, h, w)``.

Why one interface: the resolution rule (:mod:`pipeline.stages.resolution`), channel choice, tissue detection
and ingest must not know which library read the pixels, and each library misreads some formats (NOTES:
OpenSlide and GDAL both read an OME-TIFF pyramid as its first plane only), so the choice of backend is made
once, here, by content and not by file extension alone.

Backends live in :mod:`pipeline.io.readers`; a worker re-opens a source from its URL and ``reader`` name
(:func:`open_source` caches one open source per process), so only strings travel to Dask workers.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.errors import InputError, ParameterError

__all__ = ["Level", "ImageSource", "open_source", "detect_reader", "resolve_channels", "READERS", "to_um",
           "UNIT_TO_UM"]

READERS = ("auto", "gdal", "openslide", "tifffile", "zarr")

UNIT_TO_UM = {"nm": 1e-3, "nanometer": 1e-3, "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0,
              "micrometer": 1.0, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
              "metre": 1e6}


def to_um(value: float, unit: str | None) -> float | None:
    """A length in µm, or None for units that are not lengths ("pixel", "reference frame", unknown)."""
    if unit is None:
        return None
    f = UNIT_TO_UM.get(str(unit).strip().lower())
    return None if f is None else float(value) * f


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size in pixels and how many level-0 pixels one of its pixels spans."""

    height: int
    width: int
    downsample: float


class ImageSource:
    """An opened image. Backends fill the attributes in ``__init__`` and implement :meth:`_read`.

    ``pixel_size`` is level 0's (x, y) pixel size in ``pixel_unit`` ("um" for microscopy, the CRS's linear
    unit name for georeferenced rasters, e.g. "metre"), or None when unknown. ``transform`` maps level-0
    (col, row) to the output coordinates (the CRS for georeferenced rasters, level-0 pixels otherwise).
    """

    reader: str = "?"
    url: str
    format: str
    levels: list[Level]
    pixel_size: tuple[float, float] | None = None
    pixel_unit: str | None = None
    channel_names: list[str]
    dtype: str
    nodata: float | None = None
    has_mask: bool = False  # an alpha band, a GDAL mask or a slide's alpha: read_mask() says where data is
    crs_wkt: str | None = None
    transform: tuple[float, float, float, float, float, float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    series: int | None = None
    cached: bool = False  # held by open_source's per-process cache: callers must not close it

    def _check_dtype(self) -> None:
        """One clear line for a pixel type the stages cannot handle (the same rule as GDAL rasters')."""
        from pipeline.io.raster import SUPPORTED_DTYPES

        if self.dtype not in SUPPORTED_DTYPES:
            raise InputError(f"input {self.url}: unsupported pixel type {self.dtype}; expected one of "
                             f"{', '.join(SUPPORTED_DTYPES)}; convert the image to one of them")

    # -- what backends implement -------------------------------------------------------------------------
    def _read(self, level: int, row: int, col: int, h: int, w: int, channels: list[int]) -> np.ndarray:
        raise NotImplementedError

    def _read_mask(self, level: int, row: int, col: int, h: int, w: int) -> np.ndarray | None:
        return None

    def close(self) -> None:
        pass

    # -- the interface -----------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self.channel_names)

    @property
    def width(self) -> int:
        return self.levels[0].width

    @property
    def height(self) -> int:
        return self.levels[0].height

    @property
    def pixel_size_um(self) -> tuple[float, float] | None:
        """Level-0 pixel size in µm for microscopy sources (None for georeferenced or unknown)."""
        if self.pixel_size is None or self.crs_wkt is not None:
            return None
        x, y = (to_um(v, self.pixel_unit) for v in self.pixel_size)
        return (x, y) if x and y else None

    def check_window(self, level: int, row: int, col: int, h: int, w: int) -> None:
        lv = self.levels[level]
        if row < 0 or col < 0 or h <= 0 or w <= 0 or row + h > lv.height or col + w > lv.width:
            raise ValueError(f"window ({row}, {col}, {h}, {w}) outside level {level} ({lv.height}x{lv.width})")

    def read(self, level: int, row: int, col: int, h: int, w: int, channels: Sequence[int] | None = None) -> np.ndarray:
        """Pixels of a window of ``level`` as (channels, h, w); ``channels`` are 0-based (default: all)."""
        self.check_window(level, row, col, h, w)
        ch = list(range(self.count)) if channels is None else [int(c) for c in channels]
        return self._read(level, row, col, h, w, ch)

    def read_with_mask(self, level: int, row: int, col: int, h: int, w: int,
                       channels: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`read` and :meth:`read_mask` of one window (one decode where the backend allows)."""
        return self.read(level, row, col, h, w, channels), self.read_mask(level, row, col, h, w)

    def read_mask(self, level: int, row: int, col: int, h: int, w: int) -> np.ndarray | None:
        """Where the window holds data (bool, h x w) by the source's alpha/mask, or None if it has none.
        Nodata values and NaN are not included here: :func:`valid_pixels` combines all three."""
        return self._read_mask(level, row, col, h, w) if self.has_mask else None

    def valid_pixels(self, data: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
        """Valid pixels of a read (bool, h x w): not nodata in every channel, finite, inside the mask.
        None when the source cannot have invalid pixels (no nodata, integer dtype, no mask)."""
        valid = None if mask is None else mask.astype(bool, copy=True)
        if self.nodata is not None:
            v = ~np.all(data == self.nodata, axis=0)
            valid = v if valid is None else valid & v
        if data.dtype.kind == "f":
            v = np.all(np.isfinite(data), axis=0)
            valid = v if valid is None else valid & v
        return valid

    @property
    def may_have_invalid(self) -> bool:
        return self.has_mask or self.nodata is not None or np.dtype(self.dtype).kind == "f"

    def describe(self) -> dict[str, Any]:
        return {"reader": self.reader, "format": self.format, "series": self.series,
                "levels": [[lv.height, lv.width, round(lv.downsample, 6)] for lv in self.levels],
                "pixel_size": list(self.pixel_size) if self.pixel_size else None, "pixel_unit": self.pixel_unit,
                "channels": list(self.channel_names), "dtype": self.dtype, "nodata": self.nodata,
                "mask": self.has_mask}

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def _is_zarr(path: str) -> bool:
    p = path.rstrip("/")
    if p.lower().endswith(".zarr"):
        return True
    if not _is_url(path):
        lp = _local(p)
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
    if _is_url(path):
        return "tifffile" if _looks_ome(path) else "gdal"
    lp = _local(path)
    if not os.path.isfile(lp) or os.path.getsize(lp) == 0:
        return "gdal"  # GDAL's checks give the established messages (missing, folder, empty)
    try:
        import openslide

        vendor = openslide.OpenSlide.detect_format(lp)
    except Exception:  # OpenSlide missing or unable to parse: not a slide it reads
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
    except Exception:
        return False


def open_binary(path: str):
    """A binary file object for a local path or an fsspec URL (read by ranges, never downloaded whole)."""
    if _is_url(path):
        from fsspec.core import url_to_fs

        fs, inner = url_to_fs(path)  # the filesystem (e.g. a zip over s3) stays alive with the file it opened
        fh = fs.open(inner, "rb")
        fh._seamline_fs = fs
        return fh
    return open(_local(path), "rb")


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
    if cache and not _is_url(url):
        try:  # a file rewritten under the same name is a new source (workers outlive one run)
            st = os.stat(_local(url))
            key += (st.st_size, st.st_mtime_ns)
        except OSError:
            pass
    if cache:
        with _CACHE_LOCK:
            src = _CACHE.get(key)
        if src is not None:
            return src
    kind = detect_reader(url) if reader == "auto" else reader
    if kind == "gdal":
        from pipeline.io.readers.gdal import GdalSource as cls
    elif kind == "openslide":
        from pipeline.io.readers.slide import SlideSource as cls
    elif kind == "tifffile":
        from pipeline.io.readers.ometiff import OmeTiffSource as cls
    else:
        from pipeline.io.readers.omezarr import OmeZarrSource as cls
    src = cls(url, series)
    # rasterio keeps an fsspec opener in a context variable: a dataset opened through one in one Dask task
    # cannot be read in another task's context, so GDAL sources on URLs are never shared.
    if cache and not (kind == "gdal" and _is_url(url)):
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


def stem_of(path: str) -> str:
    """Output file stem of an input: its name without image extensions (a URL's query and chain removed)."""
    name = Path(path.split("::")[0].split("?")[0].rstrip("/")).name
    for suf in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".svs", ".ndpi", ".vrt"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def unique_stems(paths: list[str]) -> list[str]:
    """Output stems for a batch: each input's :func:`stem_of`, and where two inputs share one (labs name
    slides ``caseA/slide.svs``, ``caseB/slide.svs``), the shortest run of parent folder names that tells them
    apart, joined with ``_`` (``caseA_slide``, ``caseB_slide``). The same input twice is an error."""
    from collections import Counter

    if len(set(paths)) != len(paths):
        dup = next(p for p, n in Counter(paths).items() if n > 1)
        raise ParameterError(f"input {dup} is given twice; pass each input once")
    stems = [stem_of(p) for p in paths]
    parents = [[x for x in p.split("::")[0].split("?")[0].rstrip("/").split("/")[:-1] if x and not x.endswith(":")]
               for p in paths]
    counts = Counter(stems)
    out = list(stems)
    for stem in (s for s, n in counts.items() if n > 1):
        idx = [i for i, s in enumerate(stems) if s == stem]
        depth = 1
        while True:
            names = ["_".join([*parents[i][-depth:], stem]) for i in idx]
            if len(set(names)) == len(names) or depth > max(len(parents[i]) for i in idx):
                break
            depth += 1
        if len(set(names)) != len(names):
            names = [f"{stem}_{k + 1}" for k in range(len(idx))]
        for i, n in zip(idx, names):
            out[i] = n
    if len(set(out)) != len(out):  # a made-up name equal to another input's own stem
        out = [s if counts[stems[i]] == 1 else f"{s}_{i + 1}" for i, s in enumerate(out)]
    return out

