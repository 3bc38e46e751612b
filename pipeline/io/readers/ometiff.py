"""tifffile backend: OME-TIFF pyramids (SubIFD or successive-IFD levels), read as ``series[i].levels``.

Seen with OpenSlide 4.0.1: it opens a multi-channel OME-TIFF pyramid as a generic TIFF (one level, first plane, RGBA) and
GDAL reads its first channel only, silently; tifffile sees every level and every channel, and the OME-XML
names the channels and gives the physical pixel size. Windowed reads go through tifffile's zarr view of a
level (``aszarr``), which decodes only the tiles a window touches. Works on fsspec URLs (file objects).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np

from pipeline.errors import InputError
from pipeline.io.readers.base import ImageSource, Level
from pipeline.io.storage import open_binary
from pipeline.io.units import to_um

__all__ = ["OmeTiffSource", "ome_channels_and_size"]


def ome_channels_and_size(xml: str, series: int) -> tuple[list[str | None], tuple[float, float] | None]:
    """Channel names (None where unnamed) and the (x, y) pixel size in µm of OME image ``series``."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return [], None
    images = [el for el in root if el.tag.endswith("Image")]
    if series >= len(images):
        return [], None
    pixels = next((el for el in images[series] if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return [], None
    names = [ch.get("Name") for ch in pixels if ch.tag.endswith("Channel")]
    size = None
    sx, sy = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
    if sx is not None and sy is not None:
        x = to_um(float(sx), pixels.get("PhysicalSizeXUnit", "µm"))
        y = to_um(float(sy), pixels.get("PhysicalSizeYUnit", "µm"))
        size = (x, y) if x and y else None
    return names, size


class OmeTiffSource(ImageSource):
    reader = "tifffile"

    def __init__(self, url: str, series: int | None = None) -> None:
        import tifffile
        import zarr

        self.url = url
        self.series = series or 0
        try:
            self._fh = open_binary(url)
            self._tif = tifffile.TiffFile(self._fh)
        except FileNotFoundError:
            raise InputError(f"input {url}: file not found; check the path") from None
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types for a broken file; one line names it
            raise InputError(f"input {url}: not a readable (OME-)TIFF ({str(exc).splitlines()[0][:160]}); "
                             "pass an OME-TIFF, GeoTIFF or slide file") from None
        if self.series >= len(self._tif.series):
            n = len(self._tif.series)
            raise InputError(f"input {url}: series {self.series} does not exist, the file has {n} (0..{n - 1}); pick one of those")
        s = self._tif.series[self.series]
        self.format = "ome-tiff" if self._tif.is_ome else "tiff"
        self._axes = s.axes
        if "Y" not in s.axes or "X" not in s.axes:
            raise InputError(f"input {url}: image axes {s.axes} have no Y and X; expected a 2-D image (per channel)")
        self._levels = [zarr.open(s.aszarr(level=k), mode="r") for k in range(len(s.levels))]
        shapes = [dict(zip(s.axes, lv.shape)) for lv in s.levels]
        self.levels = [Level(sh["Y"], sh["X"], shapes[0]["X"] / sh["X"]) for sh in shapes]
        self._ch_axis = "C" if "C" in s.axes else ("S" if "S" in s.axes else None)
        n_ch = shapes[0].get(self._ch_axis, 1) if self._ch_axis else 1
        names, size = ome_channels_and_size(self._tif.ome_metadata, self.series) if self._tif.is_ome else ([], None)
        if self._ch_axis == "S" and n_ch in (3, 4):
            default = ["red", "green", "blue", "alpha"][:n_ch]
        else:
            default = [f"ch{i + 1}" for i in range(n_ch)]
        self.channel_names = [(names[i] if i < len(names) and names[i] else default[i]) for i in range(n_ch)]
        self.pixel_size, self.pixel_unit = (size, "um") if size else (None, None)
        self.dtype = str(s.dtype)
        self._check_dtype()

    def _read(self, level: int, row: int, col: int, h: int, w: int, channels: list[int]) -> np.ndarray:
        arr = self._levels[level]
        idx: list = []
        for ax in self._axes:
            if ax == "Y":
                idx.append(slice(row, row + h))
            elif ax == "X":
                idx.append(slice(col, col + w))
            elif ax == self._ch_axis:
                idx.append(slice(None))
            else:
                idx.append(0)  # T, Z and others: the first plane
        data = np.asarray(arr[tuple(idx)])
        kept = [ax for ax in self._axes if ax in ("Y", "X", self._ch_axis)]
        if self._ch_axis is None:
            data = data[None]
        else:
            data = np.moveaxis(data, kept.index(self._ch_axis), 0)
        return np.ascontiguousarray(data[channels])

    def close(self) -> None:
        self._tif.close()
        self._fh.close()
