"""The working frame of ``seamline diff``: one CRS for two runs, and each run's objects read into it.

OLD's CRS when it is projected, else NEW's, else the UTM zone at the scene (areas, shifts and tolerances are
then in metres, never in degrees); runs of images without georeferencing are compared in level-0 pixels. A
georeferenced run and a pixel-grid run cannot be reconciled. Windows are asked of a run in its own CRS (the
working rectangle's bounds transformed, densified), and what comes back is reprojected and clipped to the
working rectangle again — so a run in EPSG:4326 and one in UTM give the objects of the same ground.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow.compute as pc
import shapely
from pyproj import CRS, Transformer
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info

from pipeline.errors import InputError
from pipeline.io.runfile import RunFile
from pipeline.stages.change import ObjectSet
from pipeline.stages.coregister import Shift

__all__ = ["Frame", "working_frame", "transform_fn", "run_scale", "objects_in", "bbox_centres", "area_unit_of"]


@dataclass
class Frame:
    """The working frame: a CRS (None: level-0 pixels) and each run's transform into it."""

    crs: Any
    to_old: Callable[[np.ndarray], np.ndarray] | None
    to_new: Callable[[np.ndarray], np.ndarray] | None
    from_old: Any  # Transformer working → old file CRS (for windows), None when the same
    from_new: Any

    def geoms(self, which: str, g: np.ndarray) -> np.ndarray:
        fn = self.to_old if which == "old" else self.to_new
        return g if fn is None or len(g) == 0 else shapely.transform(g, fn)

    def points(self, which: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        fn = self.to_old if which == "old" else self.to_new
        xy = np.stack([x, y], axis=1)
        return xy if fn is None or len(xy) == 0 else fn(xy)

    def window(self, which: str, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        """A working-frame rectangle as a rectangle in the run's file CRS that contains it."""
        tr = self.from_old if which == "old" else self.from_new
        if tr is None:
            return x0, y0, x1, y1
        big = [v if np.isfinite(v) else None for v in (x0, y0, x1, y1)]
        if None in big:
            return -np.inf, -np.inf, np.inf, np.inf
        return tuple(tr.transform_bounds(x0, y0, x1, y1, densify_pts=21))  # type: ignore[return-value]


def transform_fn(tr) -> Callable[[np.ndarray], np.ndarray]:
    def f(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.stack([x, y], axis=1)
    return f


def working_frame(old: RunFile, new: RunFile) -> Frame:
    """OLD's CRS when projected, else NEW's, else the UTM zone at OLD's footprint centre; pixels for two
    pixel-grid runs. Raises :class:`InputError` for a georeferenced run against a pixel-grid run."""
    if old.is_pixel or new.is_pixel:
        if old.is_pixel and new.is_pixel:
            return Frame(None, None, None, None, None)
        geo, pix = (new, old) if old.is_pixel else (old, new)
        raise InputError(f"{pix.url} is in image pixels (its image has no georeferencing) but {geo.url} is in "
                         f"{geo.crs.name}: these CRSs cannot be reconciled; diff two runs of georeferenced images, "
                         "or two runs of images without georeferencing (compared in level-0 pixels)")
    if old.crs.is_projected:
        crs = old.crs
    elif new.crs.is_projected:
        crs = new.crs
    else:
        fp, _ = old.footprint()
        to84 = Transformer.from_crs(old.crs, "EPSG:4326", always_xy=True)
        lon, lat = to84.transform(fp.centroid.x, fp.centroid.y)
        info = query_utm_crs_info("WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat))
        if not info:
            raise InputError(f"{old.url}: no UTM zone for its footprint centre ({lon:.4f}, {lat:.4f}); reproject one "
                             "run to a projected CRS first")
        crs = CRS.from_epsg(info[0].code)

    def pair(src):
        if src == crs:
            return None, None
        try:
            fwd = Transformer.from_crs(src, crs, always_xy=True)
            back = Transformer.from_crs(crs, src, always_xy=True)
        except Exception as exc:  # noqa: BLE001 - pyproj raises several kinds
            raise InputError(f"cannot transform {src.name} to {crs.name} ({exc}); reproject the runs to one CRS") from None
        return transform_fn(fwd), back

    fo, bo = pair(old.crs)
    fn, bn = pair(new.crs)
    return Frame(crs, fo, fn, bo, bn)


def run_scale(rf: RunFile, frame: Frame, which: str) -> tuple[float, float, float]:
    """From a sample of the run: (pixel size in working units, working area per unit of the run's ``area``,
    99th percentile of object bbox extent in working units)."""
    t = rf.sample(columns=("area_px", "area", "geometry"))
    if t is None or t.num_rows == 0:
        return 0.0, 1.0, 0.0
    g = frame.geoms(which, shapely.from_wkb(t.column("geometry").to_numpy(zero_copy_only=False)))
    a = shapely.area(g)
    apx = t.column("area_px").to_numpy().astype(float)
    area = t.column("area").to_numpy().astype(float)
    ok = (apx > 0) & (a > 0) & (area > 0)
    if not ok.any():
        return 0.0, 1.0, 0.0
    b = shapely.bounds(g[ok])
    ext = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    return float(np.sqrt(np.median(a[ok] / apx[ok]))), float(np.median(a[ok] / area[ok])), float(np.percentile(ext, 99))


def objects_in(rf: RunFile, frame: Frame, which: str, win: tuple[float, float, float, float], shift: Shift) -> ObjectSet:
    """The run's objects whose working-frame bbox (date 2: moved back by the shift) meets ``win``."""
    dx, dy = (shift.dx, shift.dy) if which == "new" else (0.0, 0.0)
    fw = frame.window(which, win[0] + dx, win[1] + dy, win[2] + dx, win[3] + dy)
    t = rf.read_window(*fw, columns=("object_id", "class", "area", "geometry"))
    g = frame.geoms(which, shapely.from_wkb(t.column("geometry").to_numpy(zero_copy_only=False)))
    if (frame.to_old if which == "old" else frame.to_new) is not None and len(g):
        bad = ~shapely.is_valid(g)
        if bad.any():
            g[bad] = shapely.make_valid(g[bad])
    b = shapely.bounds(g) - np.array([dx, dy, dx, dy]) if len(g) else np.zeros((0, 4))
    keep = (b[:, 0] <= win[2]) & (b[:, 2] >= win[0]) & (b[:, 1] <= win[3]) & (b[:, 3] >= win[1])
    idx = np.nonzero(keep)[0]
    return ObjectSet(t.column("object_id").to_numpy()[idx], g[idx],
                     np.asarray(t.column("class").to_pylist(), dtype=object)[idx] if len(idx) else np.zeros(0, object),
                     t.column("area").to_numpy()[idx].astype(float))


def bbox_centres(t) -> tuple[np.ndarray, np.ndarray]:
    """Object bbox centres from the ``bbox`` column: in the file's CRS even when a tool reprojected the file
    and left Seamline's ``centroid_x/y`` columns behind; they move with the object just as its centroid."""
    b = t.column("bbox")
    f = lambda k: pc.struct_field(b, k).to_numpy()  # noqa: E731
    return (f("xmin") + f("xmax")) / 2, (f("ymin") + f("ymax")) / 2


def area_unit_of(crs) -> str:
    """The working frame's area unit: m2 for a metre CRS, else its unit squared (px2 for image pixels)."""
    if crs is None:
        return "px2"
    unit = crs.axis_info[0].unit_name if crs.axis_info else "unknown"
    return "m2" if unit == "metre" else f"{unit}2"
