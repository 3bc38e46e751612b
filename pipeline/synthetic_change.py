"""Two dates of one synthetic scene with known object changes, for the change-detection tests and benchmarks.

Date 2 is date 1 with some objects removed, some added and some grown, and it differs the way a second
acquisition does: its content is shifted by a sub-pixel-to-pixel co-registration error, it is brighter
(``gain``) and its noise is drawn anew (another seed, another level). The changed objects are chosen isolated
— no other object within ``gap`` pixels in either date, clear of the scene edge — so the truth is unambiguous:
a removed object is gone, an added one is new, a grown one is the same object larger, whatever the
segmentation does with touching neighbours elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyproj
import shapely

from pipeline.io.outputs import _arrow_batch, _geo_metadata
from pipeline.io.scene import PIXEL_CRS_WKT
from pipeline.io.schema import ROW_GROUP
from pipeline.synthetic import Blob, scene_blobs, write_scene

__all__ = ["ChangeTruth", "two_dates", "write_two_dates"]


@dataclass
class ChangeTruth:
    """What changed, as indices into the date-1 (``old``) and date-2 (``new``) blob lists."""

    old: list[Blob]
    new: list[Blob]
    gone: list[int] = field(default_factory=list)    # old indices
    added: list[int] = field(default_factory=list)   # new indices
    grown: list[tuple[int, int]] = field(default_factory=list)  # (old index, new index)
    shift: tuple[float, float] = (0.0, 0.0)  # (dy, dx) in pixels, date 2 relative to date 1

    def as_dict(self) -> dict:
        return {"old_objects": len(self.old), "new_objects": len(self.new), "gone": len(self.gone),
                "added": len(self.added), "grown": len(self.grown), "shift_px": list(self.shift)}


def _radius(b: Blob) -> float:
    return max(b.ry, b.rx)


def _clear(cy: float, cx: float, r: float, centres: np.ndarray, radii: np.ndarray, gap: float, skip: int = -1) -> bool:
    d = np.hypot(centres[:, 0] - cy, centres[:, 1] - cx) - radii - r
    if 0 <= skip < len(d):
        d[skip] = np.inf
    return bool(d.min(initial=np.inf) >= gap)


def two_dates(height: int = 2000, width: int = 2000, *, seed: int = 0, n_gone: int = 15, n_added: int = 15,
              n_grown: int = 15, grow: float = 1.5, shift: tuple[float, float] = (0.0, 1.5), gap: float = 4.0,
              edge: float = 24.0, **scene) -> ChangeTruth:
    """Blob lists of two dates: ``grow`` scales a grown object's radii (its area by ``grow²``); ``shift``
    (dy, dx) moves every date-2 object (co-registration error). ``scene``: :func:`scene_blobs` arguments."""
    old = scene_blobs(height, width, seed=seed, **scene)
    rng = np.random.default_rng([seed, 23])
    centres = np.array([(b.cy, b.cx) for b in old])
    radii = np.array([_radius(b) for b in old])
    inner = [i for i, b in enumerate(old) if edge <= b.cy < height - edge and edge <= b.cx < width - edge]
    order = rng.permutation(inner).tolist()
    gone: list[int] = []
    grown: list[int] = []
    for i in order:  # isolated objects only: their fate is unambiguous
        b = old[i]
        if len(grown) < n_grown and _clear(b.cy, b.cx, _radius(b) * grow, centres, radii, gap + abs(shift[0]) + abs(shift[1]), skip=i):
            grown.append(i)
        elif len(gone) < n_gone and _clear(b.cy, b.cx, _radius(b), centres, radii, gap, skip=i):
            gone.append(i)
        if len(grown) == n_grown and len(gone) == n_gone:
            break
    # the grown objects' new size blocks room for added ones
    radii_after = radii.copy()
    radii_after[grown] *= grow
    added_blobs: list[Blob] = []
    tries = 0
    while len(added_blobs) < n_added and tries < 100_000:
        tries += 1
        r = rng.uniform(5, 9)
        cy, cx = rng.uniform(edge + r, height - edge - r), rng.uniform(edge + r, width - edge - r)
        if not _clear(cy, cx, r, centres, radii_after, gap + abs(shift[0]) + abs(shift[1])):
            continue
        b = Blob(cy, cx, r * rng.uniform(0.8, 1.0), r, rng.uniform(0, np.pi), rng.uniform(0.6, 1.0))
        added_blobs.append(b)
        centres = np.vstack([centres, [cy, cx]])
        radii_after = np.append(radii_after, r)
    dy, dx = shift
    new: list[Blob] = []
    old_to_new: dict[int, int] = {}
    gone_set, grown_set = set(gone), set(grown)
    for i, b in enumerate(old):
        if i in gone_set:
            continue
        if i in grown_set:
            b = replace(b, ry=b.ry * grow, rx=b.rx * grow)
        old_to_new[i] = len(new)
        new.append(replace(b, cy=b.cy + dy, cx=b.cx + dx))
    added = []
    for b in added_blobs:
        added.append(len(new))
        new.append(replace(b, cy=b.cy + dy, cx=b.cx + dx))
    return ChangeTruth(old, new, sorted(gone), added, sorted((i, old_to_new[i]) for i in grown), (float(dy), float(dx)))


def write_two_dates(folder: str | Path, height: int = 2000, width: int = 2000, *, seed: int = 0,
                    gain: float = 1.25, noise: tuple[float, float] = (0.02, 0.03), crs: str = "EPSG:32633",
                    labels: bool = True, **kw) -> tuple[Path, Path, ChangeTruth]:
    """``folder/date1.tif`` and ``folder/date2.tif`` (0.5 m UTM GeoTIFFs on the same grid by default) and, with
    ``labels``, ``date1_labels.tif`` / ``date2_labels.tif`` (blob index + 1). Returns the two paths and the truth."""
    folder = Path(folder)
    truth = two_dates(height, width, seed=seed, **kw)
    paths = []
    for k, (blobs, g, sd) in enumerate([(truth.old, 1.0, noise[0]), (truth.new, gain, noise[1])], start=1):
        p = folder / f"date{k}.tif"
        write_scene(p, height, width, crs=crs, seed=seed * 10 + k, noise=sd, blobs=blobs, gain=g,
                    labels_path=folder / f"date{k}_labels.tif" if labels else None)
        paths.append(p)
    return paths[0], paths[1], truth


def write_object_table(path: str | Path, geoms, crs, *, classes=None, area_px=None, tile: float | None = None,
                       row_group: int | None = None) -> int:
    """Write polygons as a GeoParquet the way ``seamline segment`` writes its objects (the same columns,
    ``bbox`` covering column, zstd, row groups of at most ``ROW_GROUP`` rows, rows in tile order: tiles of
    ``tile`` map units, north row first, west to east) — for the change tests and the out-of-core benchmark,
    where objects are made directly rather than segmented. ``crs``: a pyproj CRS or anything it reads (the
    engineering pixel CRS for None). Returns the number of rows."""
    geoms = np.asarray(geoms, dtype=object)
    n = len(geoms)
    crs = pyproj.CRS.from_user_input(crs) if crs is not None else pyproj.CRS.from_wkt(PIXEL_CRS_WKT)
    cent = shapely.centroid(geoms)
    cx, cy = shapely.get_x(cent), shapely.get_y(cent)
    b = shapely.bounds(geoms)
    if tile is None:
        tile = max(float(np.ptp(b[:, [0, 2]])), float(np.ptp(b[:, [1, 3]])), 1.0) / 8
    x0, y1 = float(b[:, 0].min()), float(b[:, 3].max())
    trow, tcol = np.floor((y1 - cy) / tile).astype(np.int64), np.floor((cx - x0) / tile).astype(np.int64)
    order = np.lexsort((cx, -cy, tcol, trow))
    geoms, cx, cy, trow, tcol = geoms[order], cx[order], cy[order], trow[order], tcol[order]
    area = shapely.area(geoms)
    unit = "px" if crs.name == "Image pixel grid" else "m2"
    cls = np.full(n, "object", dtype=object) if classes is None else np.asarray(classes, dtype=object)[order]
    apx = np.maximum(1, np.round(area).astype(np.int64)) if area_px is None else np.asarray(area_px, np.int64)[order]
    rows = {"object_id": np.arange(1, n + 1, dtype=np.int64), "class": cls, "score": np.ones(n, np.float32), "doubtful": np.zeros(n, bool),
            "area_px": apx, "area": area, "area_unit": np.full(n, unit, dtype=object),
            "perimeter": shapely.length(geoms), "perimeter_unit": np.full(n, unit.rstrip("2"), dtype=object),
            "centroid_x": cx, "centroid_y": cy, "tile": (trow * (tcol.max(initial=0) + 1) + tcol).astype(np.int32)}
    rg = row_group or ROW_GROUP
    types = sorted({"Polygon" if t == 3 else "MultiPolygon" for t in shapely.get_type_id(geoms).tolist()})
    bbox = [float(v) for v in shapely.total_bounds(geoms)] if n else []
    writer = None
    try:
        for s in range(0, max(n, 1), rg):
            part = {k: v[s:s + rg] for k, v in rows.items()}
            table = _arrow_batch(part, geoms[s:s + rg], [])
            if writer is None:
                schema = table.schema.with_metadata({b"geo": _geo_metadata(crs.to_json_dict(), types, bbox)})
                writer = pq.ParquetWriter(str(path), schema, compression="zstd", write_statistics=True)
            writer.write_table(table.cast(schema), row_group_size=rg)
    finally:
        if writer is not None:
            writer.close()
    return n
