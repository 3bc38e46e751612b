"""Stage 6 (assemble): whole objects from the tile pieces, with their class, score and measures in real units.

Memory stays bounded by one batch of rows: pieces are streamed from the per-tile part files in tile order (a
coarse spatial sort), objects joined across seams are dissolved first (they are few), and whole objects are
yielded in batches that the writers (:mod:`pipeline.io.outputs`) append to the files.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import shapely

from pipeline.io import storage
from pipeline.io.scene import SceneInfo
from pipeline.io.schema import ROW_GROUP, ObjectBatch, channel_names, measurement_names
from pipeline.stages.map_geometry import measure
from pipeline.stages.pixel_stats import combine_pieces, object_columns
from pipeline.stages.quality import doubtful_objects
from pipeline.stages.regularize import regularize_many
from pipeline.stages.tile_task import part_path

__all__ = ["object_batches", "output_measurements", "assemble_objects", "valid_pixels"]


def read_part(url: str, columns: list[str] | None = None):
    return storage.read_parquet(url, columns=columns)


_BASE = ["key", "area_px", "score_sum", "geometry"]


_BASE = ["key", "area_px", "score_sum", "geometry"]


def _stat_columns(workdir: str) -> list[str]:
    """The per-piece measurement columns of this run's part files (their scalar ones, and ``class_sums``)."""
    names = storage.read_parquet_schema(part_path(workdir, 0)).names
    return [c for c in names if c not in _BASE and not c.endswith("_values")]


def valid_pixels(workdir: str, n_tiles: int) -> int:
    """Pixels holding image data over the whole scene: the sum of the part files' ``valid_px`` metadata."""
    total = 0
    for t in range(n_tiles):
        md = storage.read_parquet_schema(part_path(workdir, t)).metadata or {}
        total += int(md.get(b"valid_px", b"0"))
    return total


def _piece_rows(table) -> list[dict]:
    """A part table's rows as dicts: scalars as Python values, the pixel-value lists of edge pieces as numpy
    arrays (views of the column), not lists of Python ints (about ten times their size)."""
    lists = [c for c in table.column_names if c.endswith("_values")]
    rows = table.drop_columns(lists).to_pylist()
    for c in lists:
        col = table.column(c).combine_chunks()
        offsets, values = col.offsets.to_numpy(), col.values.to_numpy()
        for row, a, b in zip(rows, offsets[:-1].tolist(), offsets[1:].tolist()):
            row[c] = values[a:b]
    return rows


def _dissolve_groups(workdir: str, groups: dict[int, int]) -> dict[int, tuple[Any, int, float, dict]]:
    """Union the pieces of every joined object and combine their measurements:
    rep key → (pixel polygon, area_px, score_sum, measurements).

    Part files are read in tile order and an object is dissolved as soon as its last piece has been read, so
    only the pieces of objects still open at the current tile (and their pixel values, kept for exact medians)
    are held, not those of every joined object in the scene."""
    if not groups:
        return {}
    keys = np.fromiter(groups.keys(), np.int64, len(groups))
    reps, n_pieces = np.unique(np.fromiter(groups.values(), np.int64, len(groups)), return_counts=True)
    missing = dict(zip(reps.tolist(), n_pieces.tolist()))
    pieces: dict[int, list] = {}
    out = {}
    for tile_index in np.unique(keys >> 32):
        tab = read_part(part_path(workdir, int(tile_index)))
        k = tab.column("key").to_numpy()
        sel = np.nonzero(np.isin(k, keys))[0]
        sub = tab.take(sel)
        geoms = shapely.from_wkb(sub.column("geometry").to_numpy(zero_copy_only=False))
        for kk, g, row in zip(k[sel].tolist(), geoms, _piece_rows(sub.drop_columns(["geometry"]))):
            rep = groups[kk]
            pieces.setdefault(rep, []).append((g, row))
            missing[rep] -= 1
            if not missing[rep]:
                out[rep] = _dissolve(pieces.pop(rep))
    out.update({rep: _dissolve(ps) for rep, ps in pieces.items()})  # none left unless a piece was missing
    return out


def _dissolve(ps: list) -> tuple[Any, int, float, dict]:
    """One joined object from its pieces ``[(polygon, row), ...]``."""
    geom = shapely.union_all([p[0] for p in ps], grid_size=None)
    geom = shapely.normalize(geom)
    if geom.geom_type == "MultiPolygon" and len(geom.geoms) == 1:
        geom = geom.geoms[0]
    rows = [p[1] for p in ps]
    n_ch = sum(1 for c in rows[0] if c.endswith("_values"))
    meas = combine_pieces(rows, n_ch) if "mean_x" in rows[0] else {}
    if "class_sums" in rows[0]:  # a multi-class model: the pieces' class probability sums add up
        meas["class_sums"] = np.sum([r["class_sums"] for r in rows], axis=0)
    return geom, sum(r["area_px"] for r in rows), sum(r["score_sum"] for r in rows), meas


def assemble_objects(workdir: str, n_tiles: int, groups: dict[int, int], batch_rows: int = ROW_GROUP) -> Iterator[dict]:
    """Yield batches of whole objects in tile order: dicts of ``key, geometry (pixel coords), area_px, score_sum,
    tile`` and the measurement columns of :mod:`pipeline.stages.pixel_stats`."""
    dissolved = _dissolve_groups(workdir, groups)
    # the measurements, and a multi-class model's class_sums (summed over pieces; argmax in write_outputs)
    stat_cols = _stat_columns(workdir) if n_tiles else []
    names = ["key", "geometry", "area_px", "score_sum", "tile", *stat_cols]
    buf: dict[str, list] = {c: [] for c in names}
    for t in range(n_tiles):
        tab = read_part(part_path(workdir, t), columns=[*_BASE, *stat_cols])
        if tab.num_rows == 0:
            continue
        keys = tab.column("key").to_numpy()
        geoms = shapely.from_wkb(tab.column("geometry").to_numpy(zero_copy_only=False))
        ap = tab.column("area_px").to_numpy()
        ss = tab.column("score_sum").to_numpy()
        stats = [tab.column(c).to_numpy() if c != "class_sums" else np.asarray(tab.column(c).to_pylist(), np.float64).reshape(tab.num_rows, -1)
                 for c in stat_cols]
        for i, (k, g, a, s) in enumerate(zip(keys.tolist(), geoms, ap.tolist(), ss.tolist())):
            rep = groups.get(k)
            if rep is not None:
                if rep != k:
                    continue
                g, a, s, meas = dissolved[rep]
                vals = [meas[c] for c in stat_cols]
            else:
                vals = [col[i] for col in stats]
            buf["key"].append(k)
            buf["geometry"].append(g)
            buf["area_px"].append(a)
            buf["score_sum"].append(s)
            buf["tile"].append(t)
            for c, v in zip(stat_cols, vals):
                buf[c].append(v)
        if len(buf["key"]) >= batch_rows:
            yield buf
            buf = {k: [] for k in buf}
    if buf["key"]:
        yield buf


def regularized(geoms_px: np.ndarray, info: SceneInfo, params: dict[str, Any]) -> np.ndarray:
    """Regularise pixel-space polygons with a tolerance in real units — metres on the ground for a
    georeferenced scene, whatever its CRS (a tolerance in degrees left triangles, #26), µm for microscopy with a
    pixel size, else pixels — turned into pixels by :attr:`SceneInfo.pixel_length` (square pixels make the
    two equivalent)."""
    px, _ = info.pixel_length
    return regularize_many(geoms_px, params["tolerance"] / px, params["angle_tolerance"], params["min_iou"])


def output_measurements(info: SceneInfo, regularize: dict[str, Any] | None) -> list[str]:
    """The measurement columns a scene's objects get (after the base columns), in order."""
    extra = measurement_names(channel_names(info))
    return [*extra, "area_raw"] if regularize else extra


def object_batches(workdir: str, n_tiles: int, groups: dict[int, int], info: SceneInfo, class_name: str,
                   class_names: list[str] | None = None, regularize: dict[str, Any] | None = None,
                   batch_rows: int = ROW_GROUP, limits: dict[str, float] | None = None) -> Iterator[ObjectBatch]:
    """Whole objects in tile order, numbered ``1..N`` (``object_id``, unique in the scene), in batches.

    ``class_names``: a multi-class model's classes; each object gets the one with the largest probability
    summed over its pixels (else every object is ``class_name``). ``regularize``: squared building outlines
    (:mod:`pipeline.stages.regularize`) for the objects of its classes, with ``area_raw`` kept. ``limits``: the
    model's per-object thresholds (:func:`pipeline.stages.quality.object_limits`) for the ``doubtful`` flag."""
    channels = channel_names(info)
    next_id = 1
    for batch in assemble_objects(workdir, n_tiles, groups, batch_rows):
        geoms_px = np.array(batch["geometry"], dtype=object)
        n = len(geoms_px)
        if class_names and "class_sums" in batch and n:
            sums = np.asarray(batch["class_sums"], np.float64).reshape(n, -1)
            cls = np.asarray(class_names, dtype=object)[sums.argmax(axis=1)]
        else:
            cls = np.full(n, class_name, dtype=object)
        area_raw = None
        if regularize:
            area_raw = measure(geoms_px, info)["area"]
            sel = np.isin(cls.astype(str), list(regularize["classes"]))
            if sel.any():
                geoms_px = geoms_px.copy()
                geoms_px[sel] = regularized(geoms_px[sel], info, regularize)
        m = measure(geoms_px, info)
        area_px = np.asarray(batch["area_px"], np.int64)
        score = np.clip(np.asarray(batch["score_sum"]) / np.maximum(area_px, 1), 0, 1)
        rows = {
            "object_id": np.arange(next_id, next_id + n, dtype=np.int64),
            "class": cls,
            "score": score,
            "doubtful": doubtful_objects(area_px, score, limits),
            "area_px": area_px,
            "tile": np.asarray(batch["tile"], np.int32),
            **{k: v for k, v in m.items() if k != "geometry"},
        }
        rows.update(object_columns(batch, geoms_px, m["area"], m["perimeter"], info, channels))
        if area_raw is not None:
            rows["area_raw"] = area_raw
        next_id += n
        yield ObjectBatch(rows, m["geometry"], geoms_px)
