"""GDAL backend (rasterio): GeoTIFF, COG, VRT mosaics (gdalbuildvrt), plain and generic pyramidal TIFF.

Levels are the full-resolution dataset followed by its overviews (internal, reduced-resolution IFDs, or
.ovr), each opened as its own dataset with GDAL's ``OVERVIEW_LEVEL`` so a window read at a level touches only
that level's blocks. An alpha band is not a channel: it becomes the mask, as does a per-dataset GDAL mask
band. Every existing bad-input message comes from :mod:`pipeline.io.raster`, unchanged.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

from pipeline.io.raster import _pixel_size_from_tiff, check_dataset, clean_nodata, open_raster
from pipeline.io.readers.base import ImageSource, Level
from pipeline.io.scene import ground_pixel_size, pixel_grid_transform

__all__ = ["GdalSource"]


class GdalSource(ImageSource):
    reader = "gdal"

    def __init__(self, url: str, series: int | None = None) -> None:
        from rasterio.enums import ColorInterp, MaskFlags

        self.url = url
        self.series = None
        self._lock = threading.Lock()  # a rasterio dataset is not safe across threads of one worker
        ds = open_raster(url)
        try:
            self.dtype = check_dataset(ds, url)
        except Exception:
            ds.close()
            raise
        self._ds = {0: ds}
        self.format = ds.driver
        ci = list(ds.colorinterp)
        self._alpha = [i for i, c in enumerate(ci) if c == ColorInterp.alpha]
        self._bands = [i + 1 for i in range(ds.count) if i not in self._alpha]  # GDAL's 1-based band numbers
        if not self._bands:  # a lone band flagged alpha is still data
            self._bands, self._alpha = [1], []
        names = []
        for b in self._bands:
            desc = ds.descriptions[b - 1]
            c = ci[b - 1]
            names.append(desc if desc else (c.name if c not in (ColorInterp.undefined, ColorInterp.gray) else f"ch{b}"))
        self.channel_names = names
        self.nodata = clean_nodata(ds.nodata)
        self._per_dataset_mask = (not self._alpha and ds.nodata is None
                                  and all(MaskFlags.per_dataset in ds.mask_flag_enums[b - 1] and
                                          MaskFlags.all_valid not in ds.mask_flag_enums[b - 1] for b in self._bands))
        self.has_mask = bool(self._alpha) or self._per_dataset_mask
        t = ds.transform
        self.crs_wkt = ds.crs.to_wkt() if ds.crs is not None else None
        self.transform = pixel_grid_transform((t.a, t.b, t.c, t.d, t.e, t.f), self.crs_wkt)
        if self.crs_wkt is not None:
            # The ground pixel size in metres at the scene centre, whatever the CRS's units (degrees, feet,
            # Web Mercator's metres): what the resolution rule and every length setting in metres need.
            self.pixel_size = ground_pixel_size(self.crs_wkt, self.transform, ds.width, ds.height)
            self.pixel_unit = "m"
        else:
            ps = _pixel_size_from_tiff(url) if ds.driver != "VRT" else None
            self.pixel_size, self.pixel_unit = (ps, "um") if ps else (None, None)
        self.levels = [Level(ds.height, ds.width, 1.0)]
        for f in ds.overviews(self._bands[0]):
            self.levels.append(Level(-(-ds.height // f), -(-ds.width // f), float(f)))
        for k in range(1, len(self.levels)):  # exact shapes (GDAL rounds overview sizes its own way)
            o = self._level_ds(k)
            self.levels[k] = Level(o.height, o.width, ds.width / o.width)

    def _level_ds(self, level: int):
        ds = self._ds.get(level)
        if ds is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = open_raster(self.url, overview_level=level - 1)
            self._ds[level] = ds
        return ds

    def _read(self, level: int, row: int, col: int, h: int, w: int, channels: list[int]) -> np.ndarray:
        from rasterio.windows import Window

        with self._lock:
            ds = self._level_ds(level)
            return ds.read([self._bands[c] for c in channels], window=Window(col, row, w, h))

    def _read_mask(self, level: int, row: int, col: int, h: int, w: int) -> np.ndarray | None:
        from rasterio.windows import Window

        with self._lock:
            ds = self._level_ds(level)
            if self._alpha:
                return ds.read(self._alpha[0] + 1, window=Window(col, row, w, h)) > 0
            return ds.dataset_mask(window=Window(col, row, w, h)) > 0

    def close(self) -> None:
        for ds in self._ds.values():
            ds.close()
        self._ds = {}
