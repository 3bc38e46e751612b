"""What the pipeline knows about an input scene (:class:`SceneInfo`, a small frozen value object that
travels to Dask workers) and the pixel types the stages handle. Every stage imports this; nothing here reads
pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyproj

from pipeline.io.storage import stem_of

__all__ = ["SceneInfo", "SUPPORTED_DTYPES", "scene_crs", "PIXEL_CRS_WKT"]

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass(frozen=True)
class SceneInfo:
    """What Seamline needs to know about an input (JSON-serialisable via :meth:`as_attrs`).

    ``width``/``height``/``count``/``transform``/``pixel_size_um`` describe the *working* image: the one the
    zarr store holds and the model sees. It is pyramid level ``level`` of the source, area-averaged down by
    ``resample`` (1 = read as stored), so one working pixel spans ``scale`` level-0 pixels; ``transform`` is
    the level-0 transform scaled by ``scale``, so polygons come out in level-0 coordinates / the CRS.
    ``channels`` are the source's 0-based channels copied (None = all), ``channel_names`` their names.
    """

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]
    nodata: float | None
    pixel_size_um: tuple[float, float] | None = None
    driver: str = "GTiff"
    reader: str = "gdal"
    series: int | None = None
    level: int = 0
    resample: float = 1.0
    scale: float = 1.0
    level0: tuple[int, int] | None = None  # (height, width) of level 0; None = the working size
    levels: tuple[tuple[int, int, float], ...] = ()
    channels: tuple[int, ...] | None = None
    channel_names: tuple[str, ...] | None = None
    has_mask: bool = False  # the source has an alpha band / mask / may hold nodata or NaN: the store has "valid"

    @property
    def georeferenced(self) -> bool:
        return self.crs_wkt is not None

    @property
    def stem(self) -> str:
        return stem_of(self.path)

    def as_attrs(self) -> dict[str, Any]:
        return {
            "source": self.path, "width": self.width, "height": self.height, "count": self.count,
            "dtype": self.dtype, "crs_wkt": self.crs_wkt, "transform": list(self.transform),
            "nodata": self.nodata, "pixel_size_um": list(self.pixel_size_um) if self.pixel_size_um else None,
            "driver": self.driver, "reader": self.reader, "series": self.series, "level": self.level,
            "resample": self.resample, "scale": self.scale, "level0": list(self.level0) if self.level0 else None,
            "levels": [list(lv) for lv in self.levels],
            "channels": list(self.channels) if self.channels is not None else None,
            "channel_names": list(self.channel_names) if self.channel_names is not None else None,
            "has_mask": self.has_mask,
        }

    @classmethod
    def from_attrs(cls, a: dict[str, Any]) -> "SceneInfo":
        return cls(a["source"], a["width"], a["height"], a["count"], a["dtype"], a["crs_wkt"], tuple(a["transform"]),
                   a["nodata"], tuple(a["pixel_size_um"]) if a.get("pixel_size_um") else None, a.get("driver", "GTiff"),
                   a.get("reader", "gdal"), a.get("series"), a.get("level", 0), a.get("resample", 1.0),
                   a.get("scale", 1.0), tuple(a["level0"]) if a.get("level0") else None,
                   tuple(tuple(lv) for lv in a.get("levels", ())),
                   tuple(a["channels"]) if a.get("channels") is not None else None,
                   tuple(a["channel_names"]) if a.get("channel_names") is not None else None, a.get("has_mask", False))


PIXEL_CRS_WKT = (
    'ENGCRS["Image pixel grid",EDATUM["Image"],CS[Cartesian,2],'
    'AXIS["x (column)",east,ORDER[1],LENGTHUNIT["unknown",1]],'
    'AXIS["y (row)",south,ORDER[2],LENGTHUNIT["unknown",1]]]'
)


def scene_crs(info: "SceneInfo") -> pyproj.CRS:
    """The CRS of the outputs: the scene's own, or, for an image without georeferencing, an engineering CRS of
    its pixel grid (never omitted: an omitted CRS means lon/lat to GeoParquet readers)."""
    return pyproj.CRS.from_wkt(info.crs_wkt if info.crs_wkt else PIXEL_CRS_WKT)
