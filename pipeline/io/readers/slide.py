"""OpenSlide backend: vendor whole-slide formats (Aperio SVS, Hamamatsu NDPI, Philips TIFF, Leica SCN,
MIRAX, Ventana BIF, ...) through the ``openslide-bin`` + ``openslide-python`` wheels.

OpenSlide gives the levels (dimensions and downsamples, including levels it derives), the pixel size
(``openslide.mpp-x/-y`` in µm) and ``read_region``, which takes level-0 coordinates and returns RGBA: alpha 0
marks areas the scanner did not scan, which become the mask. Local files only (OpenSlide opens paths).
"""

from __future__ import annotations

import threading

import numpy as np

from pipeline.errors import InputError
from pipeline.io import storage
from pipeline.io.readers.base import ImageSource, Level
from pipeline.io.scene import PIXEL_TRANSFORM

__all__ = ["SlideSource"]


class SlideSource(ImageSource):
    reader = "openslide"

    def __init__(self, url: str, series: int | None = None) -> None:
        try:
            import openslide
        except ImportError:  # pragma: no cover - a dependency
            raise InputError(f"input {url}: a whole-slide file needs OpenSlide; pip install openslide-bin openslide-python") from None
        path = storage.local_path(url)
        if storage.is_url(path):
            raise InputError(f"input {url}: OpenSlide reads local files only; copy the slide to a local disk "
                             "(or pass reader: tifffile for SVS/NDPI over fsspec)")
        try:
            self._s = openslide.OpenSlide(path)
        except Exception as exc:  # noqa: BLE001 - OpenSlide raises its own and OS errors; one line names the slide
            raise InputError(f"input {url}: OpenSlide cannot read this slide ({str(exc).splitlines()[0][:160]}); "
                             "re-copy it or convert it with vips/bfconvert to a pyramidal TIFF") from None
        self.url = url
        self.series = None
        self._lock = threading.Lock()
        p = self._s.properties
        self.format = p.get("openslide.vendor", "slide")
        self.levels = [Level(h, w, float(d)) for (w, h), d in zip(self._s.level_dimensions, self._s.level_downsamples)]
        try:
            mx, my = float(p["openslide.mpp-x"]), float(p["openslide.mpp-y"])
            self.pixel_size, self.pixel_unit = ((mx, my), "um") if mx > 0 and my > 0 else (None, None)
        except (KeyError, ValueError):
            self.pixel_size, self.pixel_unit = None, None
        self.channel_names = ["red", "green", "blue"]
        self.dtype = "uint8"
        self.nodata = None
        self.has_mask = True
        self.crs_wkt = None
        self.transform = PIXEL_TRANSFORM
        self.properties = dict(p)
        try:
            self._s.read_region((0, 0), self.levels and len(self.levels) - 1, (1, 1))
        except Exception as exc:  # noqa: BLE001 - a corrupt slide raises anything; one line names it
            raise InputError(f"input {url}: pixel data cannot be read ({str(exc).splitlines()[0][:160]}); the slide "
                             "looks truncated or corrupt — re-copy it") from None

    def _rgba(self, level: int, row: int, col: int, h: int, w: int) -> np.ndarray:
        d = self.levels[level].downsample
        with self._lock:
            img = self._s.read_region((int(round(col * d)), int(round(row * d))), level, (w, h))
        return np.asarray(img)  # (h, w, 4) uint8, premultiplied: 0 outside scanned areas

    def _read(self, level: int, row: int, col: int, h: int, w: int, channels: list[int]) -> np.ndarray:
        a = self._rgba(level, row, col, h, w)
        return np.ascontiguousarray(np.moveaxis(a[:, :, channels], 2, 0))

    def read_with_mask(self, level, row, col, h, w, channels=None):
        self.check_window(level, row, col, h, w)
        a = self._rgba(level, row, col, h, w)
        ch = list(range(self.count)) if channels is None else [int(c) for c in channels]
        return np.ascontiguousarray(np.moveaxis(a[:, :, ch], 2, 0)), a[:, :, 3] > 0

    def _read_mask(self, level: int, row: int, col: int, h: int, w: int) -> np.ndarray | None:
        return self._rgba(level, row, col, h, w)[:, :, 3] > 0

    def close(self) -> None:
        self._s.close()
