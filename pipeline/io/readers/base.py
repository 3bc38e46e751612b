"""The reader interface every backend implements (:class:`ImageSource`) and what backends share.

Backends (:mod:`pipeline.io.readers.gdal`, ``slide``, ``ometiff``, ``omezarr``) import this module;
:mod:`pipeline.io.sources` detects which backend reads an input and opens it. Nothing here imports a backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline.errors import InputError
from pipeline.io.scene import PIXEL_TRANSFORM, SUPPORTED_DTYPES
from pipeline.io.units import to_um

__all__ = ["Level", "ImageSource"]


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
    (col, row) to the output coordinates (the CRS for georeferenced rasters; otherwise x = column, y = -row:
    :data:`~pipeline.io.scene.PIXEL_TRANSFORM`).
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
    transform: tuple[float, float, float, float, float, float] = PIXEL_TRANSFORM  # type: ignore[assignment]
    series: int | None = None
    cached: bool = False  # held by open_source's per-process cache: callers must not close it

    def _check_dtype(self) -> None:
        """One clear line for a pixel type the stages cannot handle (the same rule as GDAL rasters')."""
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
