"""What the pipeline knows about an input scene (:class:`SceneInfo`, a small frozen value object that
travels to Dask workers) and the pixel types the stages handle. Every stage imports this; nothing here reads
pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyproj

from pipeline.io.storage import stem_of

__all__ = ["SceneInfo", "SUPPORTED_DTYPES", "scene_crs", "ground_pixel_size", "PIXEL_CRS_WKT", "PIXEL_TRANSFORM",
           "pixel_grid_transform"]

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
    ground_pixel_m: tuple[float, float] | None = None  # georeferenced: a working pixel's (x, y) size on the ground, m

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
            "ground_pixel_m": list(self.ground_pixel_m) if self.ground_pixel_m else None,
        }

    @classmethod
    def from_attrs(cls, a: dict[str, Any]) -> "SceneInfo":
        return cls(a["source"], a["width"], a["height"], a["count"], a["dtype"], a["crs_wkt"], tuple(a["transform"]),
                   a["nodata"], tuple(a["pixel_size_um"]) if a.get("pixel_size_um") else None, a.get("driver", "GTiff"),
                   a.get("reader", "gdal"), a.get("series"), a.get("level", 0), a.get("resample", 1.0),
                   a.get("scale", 1.0), tuple(a["level0"]) if a.get("level0") else None,
                   tuple(tuple(lv) for lv in a.get("levels", ())),
                   tuple(a["channels"]) if a.get("channels") is not None else None,
                   tuple(a["channel_names"]) if a.get("channel_names") is not None else None, a.get("has_mask", False),
                   tuple(a["ground_pixel_m"]) if a.get("ground_pixel_m") else None)

    @property
    def pixel_length(self) -> tuple[float, str]:
        """One working pixel's length in real units, whatever the CRS: ``(metres, "m")`` on the ground for a
        georeferenced scene (also in degrees: :func:`ground_pixel_size`), ``(µm, "um")`` for microscopy with a
        pixel size, else ``(1, "px")``. What every length setting documented in m or µm is divided by."""
        if self.ground_pixel_m:
            return math.sqrt(self.ground_pixel_m[0] * self.ground_pixel_m[1]), "m"
        if self.pixel_size_um:
            return math.sqrt(self.pixel_size_um[0] * self.pixel_size_um[1]), "um"
        return 1.0, "px"


PIXEL_CRS_WKT = (
    'ENGCRS["Image pixel grid",EDATUM["Image"],CS[Cartesian,2],'
    'AXIS["x (column)",east,ORDER[1],LENGTHUNIT["unknown",1]],'
    'AXIS["y (minus the row)",north,ORDER[2],LENGTHUNIT["unknown",1]]]'
)

#: Where an image without georeferencing is placed: x = column, y = -row (level-0 pixels), the way GDAL and QGIS
#: place such an image (its extent is 0..width, -height..0), so that its polygons draw over it in QGIS, right
#: way up. The QuPath file keeps QuPath's own pixel coordinates (y = row).
PIXEL_TRANSFORM = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def pixel_grid_transform(transform: tuple[float, ...], crs_wkt: str | None) -> tuple[float, ...]:
    """``transform`` of an image, or :data:`PIXEL_TRANSFORM` for one with neither CRS nor geotransform (GDAL then
    reports the identity)."""
    if not crs_wkt and tuple(float(v) for v in transform[:6]) == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0):
        return PIXEL_TRANSFORM
    return tuple(transform[:6])


def scene_crs(info: "SceneInfo") -> pyproj.CRS:
    """The CRS of the outputs: the scene's own, or, for an image without georeferencing, an engineering CRS of
    its pixel grid (never omitted: an omitted CRS means lon/lat to GeoParquet readers)."""
    return pyproj.CRS.from_wkt(info.crs_wkt if info.crs_wkt else PIXEL_CRS_WKT)


def ground_pixel_size(crs_wkt: str, transform: tuple[float, ...], width: int, height: int) -> tuple[float, float]:
    """A pixel's (x, y) size on the ground in metres at the scene centre: geodesic distances on the CRS's
    ellipsoid from the centre pixel to its neighbours along the columns and the rows.

    The same figure whatever the CRS: a scene in EPSG:4326 (degrees: ~1e-6 deg/px) or Web Mercator (whose
    metres are ground metres only at the equator: ×cos(latitude)) and the same place in UTM get the same ground
    pixel size, so the resolution rule resamples them alike. A CRS pyproj cannot take to longitude/latitude
    (an engineering CRS) falls back to the map units' length."""
    crs = pyproj.CRS.from_user_input(crs_wkt)
    a, b, c, d, e, f = transform
    col, row = width / 2.0, height / 2.0

    def xy(cc: float, rr: float) -> tuple[float, float]:
        return a * cc + b * rr + c, d * cc + e * rr + f

    try:
        geo = crs.geodetic_crs
        if geo is None:
            raise pyproj.exceptions.CRSError("no geodetic CRS")
        to_lonlat = pyproj.Transformer.from_crs(crs, geo, always_xy=True)
        geod = geo.get_geod()
        x0, y0 = to_lonlat.transform(*xy(col, row))
        x1, y1 = to_lonlat.transform(*xy(col + 1, row))
        x2, y2 = to_lonlat.transform(*xy(col, row + 1))
        gx = geod.inv(x0, y0, x1, y1)[2]
        gy = geod.inv(x0, y0, x2, y2)[2]
        if math.isfinite(gx) and math.isfinite(gy) and gx > 0 and gy > 0:
            mx, my = _map_metres(crs, a, b, d, e)
            # A projected CRS in metres whose scale is ~1 here (UTM, national grids): keep the header's figure, the
            # one the analyst's GIS shows (UTM's 0.9996 scale factor is not a different resolution)
            if mx and abs(gx / mx - 1) < 0.01 and abs(gy / my - 1) < 0.01:
                return mx, my
            return float(gx), float(gy)
    except (pyproj.exceptions.CRSError, pyproj.exceptions.ProjError):
        pass
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return float(math.hypot(a, d) * (factor or 1.0)), float(math.hypot(b, e) * (factor or 1.0))


def _map_metres(crs: pyproj.CRS, a: float, b: float, d: float, e: float) -> tuple[float, float]:
    """A pixel's size in map units converted to metres, or (0, 0) when the CRS's units are not lengths."""
    if not crs.is_projected or not crs.axis_info or crs.axis_info[0].unit_name in ("degree", "radian"):
        return 0.0, 0.0
    factor = crs.axis_info[0].unit_conversion_factor or 1.0
    return float(math.hypot(a, d) * factor), float(math.hypot(b, e) * factor)
