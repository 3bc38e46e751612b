"""Stage 3 (segment tiles) on one batch of tiles: read windows, run the model, label instances, keep the cores.

For each tile this writes, idempotently (a tile whose part file exists is skipped, so a re-run after a dead
worker does not redo it):

* its window labels into the ``windows`` zarr array (one chunk per tile: disjoint writes) — the stitch
  compares neighbouring windows in the seam band;
* ``parts/t<index>.parquet``: one row per object *piece* in the tile core — the key
  ``tile_index << 32 | label``, pixel count, score sum and the polygon in scene pixel coordinates.

The model is loaded once per worker process (``_MODELS`` cache), never shipped with the tasks.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

import numpy as np

from pipeline.io import storage
from pipeline.models.normalize import apply_normalization
from pipeline.models.registry import load_model
from pipeline.stages.grid import Tile, TileGrid
from pipeline.stages.pixel_stats import piece_measurements

__all__ = ["TileJob", "process_tiles", "part_path", "get_model", "vectorize_core", "tile_key"]

_MODELS: dict[tuple, object] = {}
_MODELS_LOCK = threading.Lock()


def get_model(spec: str, classical: dict, device: str, threads: int | None, tta: bool = False, inference: str = "eager"):
    """The worker's model, loaded on first use; task threads of one worker share it (loaded once)."""
    key = (spec, tuple(sorted(classical.items())), device, tta, inference)
    with _MODELS_LOCK:
        m = _MODELS.get(key)
        if m is None:
            m = load_model(spec, classical, device=device, threads=threads, tta=tta, inference=inference)
            _MODELS.clear()  # one model per worker at a time
            _MODELS[key] = m
    return m


def tile_key(index: int, label: np.ndarray | int):
    return (np.int64(index) << np.int64(32)) | np.asarray(label, dtype=np.int64)


def part_path(workdir: str, index: int) -> str:
    """The part file of one tile: a local path or a URL, like the work folder (:mod:`pipeline.io.storage`)."""
    return storage.join(workdir, "parts", f"t{index:07d}.parquet")


@dataclass(frozen=True)
class TileJob:
    """Everything a worker needs for a batch of tiles: references, never arrays."""

    zarr_path: str  # path or URL of the scene's zarr store
    workdir: str  # path or URL of the work folder
    height: int
    width: int
    tile: int
    halo: int
    model: str
    classical: dict
    stats: dict
    nodata: float | None
    device: str = "auto"
    threads: int | None = None
    batch_size: int | None = None  # windows per forward pass; None: the model's default for its device
    tta: bool = False
    inference: str = "eager"
    skip: frozenset[int] = frozenset()  # tiles the model never runs on (no tissue, all nodata): empty parts
    masked: bool = False  # the store has a "valid" array: objects are never made of invalid (nodata) pixels

    @property
    def grid(self) -> TileGrid:
        return TileGrid(self.height, self.width, self.tile, self.halo)

    @property
    def window_size(self) -> int:
        return self.tile + 2 * self.halo


def vectorize_core(labels: np.ndarray, core_rel: tuple[slice, slice], row0: int, col0: int):
    """Polygons of each label in the core, in scene pixel coordinates (x = column, y = row).

    4-connectivity: 8-connected polygonisation can produce self-touching, invalid rings (rasterio.features.shapes; none seen with 4-connectivity).
    Returns ``(ids, area_px, geoms)`` with one (Multi)Polygon per label.
    """
    import shapely
    from rasterio import features
    from rasterio.transform import Affine

    core = np.ascontiguousarray(labels[core_rel]).astype(np.int32, copy=False)
    counts = np.bincount(core.ravel())
    ids = np.nonzero(counts)[0]
    ids = ids[ids != 0]
    if ids.size == 0:
        return ids, np.zeros(0, np.int64), []
    # Collect every ring's vertices, then build all polygons in one call (shapely.from_ragged_array):
    # making one shapely object per GeoJSON dict costs three quarters of the time at 10^4 objects per tile.
    values: list[int] = []
    rings: list = []
    ring_ends: list[int] = []
    poly_ends: list[int] = []
    n_pts = 0
    for geom, value in features.shapes(core, mask=core > 0, connectivity=4, transform=Affine(1, 0, col0, 0, 1, row0)):
        values.append(int(value))
        for ring in geom["coordinates"]:
            rings.append(ring)
            n_pts += len(ring)
            ring_ends.append(n_pts)
        poly_ends.append(len(ring_ends))
    coords = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(rings)), np.float64, 2 * n_pts)
    polys = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, coords.reshape(-1, 2),
        (np.array([0, *ring_ends], np.int64), np.array([0, *poly_ends], np.int64)),
    )
    order = np.argsort(values, kind="stable")  # pieces of one label together, in the order GDAL gave them
    vals = np.asarray(values)[order]
    starts = np.searchsorted(vals, ids)
    ends = np.searchsorted(vals, ids, side="right")
    geoms = [polys[order[a]] if b - a == 1 else shapely.MultiPolygon(list(polys[order[a:b]])) for a, b in zip(starts, ends)]
    return ids, counts[ids].astype(np.int64), geoms


def _write_part(path: str, index: int, ids, area_px, score_sum, geoms, meas: dict | None = None, valid_px: int | None = None,
                class_sums: np.ndarray | None = None) -> None:
    """One row per piece; ``meas`` adds the per-piece measurements (:mod:`pipeline.stages.pixel_stats`),
    the sorted pixel values of edge pieces as list columns. ``valid_px`` (the core's pixels holding image data)
    goes into the file's metadata: the scene's valid area is their sum, also after a resumed run.
    ``class_sums`` (pieces × classes): a multi-class model's class probabilities summed over each piece."""
    import pyarrow as pa
    import shapely

    cols = {
        "key": pa.array(tile_key(index, ids) if len(ids) else np.zeros(0, np.int64), pa.int64()),
        "area_px": pa.array(area_px, pa.int64()),
        "score_sum": pa.array(score_sum, pa.float64()),
        "geometry": pa.array(shapely.to_wkb(np.array(geoms, dtype=object)) if len(geoms) else [], pa.binary()),
    }
    if class_sums is not None:
        k = class_sums.shape[1]
        cols["class_sums"] = pa.FixedSizeListArray.from_arrays(pa.array(class_sums.reshape(-1), pa.float64()), k)
    for name, v in (meas or {}).items():
        if isinstance(v, tuple):
            cols[name] = pa.ListArray.from_arrays(pa.array(v[0].astype(np.int32)), pa.array(v[1]))
        else:
            cols[name] = pa.array(v)
    table = pa.table(cols)
    if valid_px is not None:
        table = table.replace_schema_metadata({b"valid_px": str(int(valid_px)).encode()})
    storage.write_parquet(path, table)  # atomic: a part file exists only complete (it marks the tile done)


def _read_windows(job: TileJob, tiles: list[Tile], valids: dict[int, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Normalised windows for the model, and the raw windows (kept for the per-object measurements).
    Invalid (nodata, NaN, alpha 0) pixels are set to 0 for the model and their masks kept in ``valids``."""
    import zarr

    arr = zarr.open_array(storage.zarr_store(job.zarr_path, read_only=True), path="image", mode="r")
    varr = zarr.open_array(storage.zarr_store(job.zarr_path, read_only=True), path="valid", mode="r") if job.masked else None
    out, raw = [], []
    for t in tiles:
        w = t.window
        data = arr[:, w.row : w.row_end, w.col : w.col_end]
        norm = apply_normalization(data, job.stats["percentiles"])
        if varr is not None:
            valid = varr[w.row : w.row_end, w.col : w.col_end].astype(bool)
            norm[:, ~valid] = 0.0
            valids[t.index] = valid
        elif job.nodata is not None:
            norm[:, np.all(data == job.nodata, axis=0)] = 0.0
        out.append(norm)
        raw.append(data)
    return out, raw


STEPS = ("read", "model", "instances", "vectorize", "measure")


def _clocks() -> np.ndarray:
    """Wall and CPU seconds now. A step's CPU seconds (this worker process: its task thread and the I/O threads
    working for it; one task thread per worker by default) stay meaningful on a shared machine, where its wall
    seconds also count the waits for a free core."""
    return np.array([time.perf_counter(), time.process_time()])


def _add(timings: dict[str, float], step: str, since: np.ndarray) -> np.ndarray:
    """Add the wall (``step``) and CPU (``step_cpu``) seconds since ``since`` to ``timings``; returns now."""
    now = _clocks()
    timings[step] += now[0] - since[0]
    timings[f"{step}_cpu"] += now[1] - since[1]
    return now


def _post_process(model, job: TileJob, win_arr, t: Tile, heads: np.ndarray, raw: np.ndarray, timings: dict[str, float],
                  valid: np.ndarray | None = None) -> int:
    """Label one tile's window, store the window labels, vectorize and measure the core, write the part file.
    Labels on invalid pixels (``valid`` False: nodata, NaN, alpha 0) are removed: no object is made of them.
    Returns the number of pieces; adds the seconds spent labelling, vectorizing and measuring to ``timings``."""
    ta = _clocks()
    if model.kind == "classical":
        labels, prob = model.instances(heads, job.stats["threshold"], job.stats.get("threshold_low"))
    else:
        labels, prob = model.instances(heads)
    if valid is not None and not valid.all():
        labels = np.where(valid, labels, 0).astype(labels.dtype, copy=False)
    tb = _add(timings, "instances", ta)
    block = np.zeros((job.window_size, job.window_size), np.uint32)
    block[: labels.shape[0], : labels.shape[1]] = labels
    win_arr[t.index] = block
    core_rel = t.core.relative_to(t.window)
    ids, area_px, geoms = vectorize_core(labels, core_rel, t.core.row, t.core.col)
    def piece_sums(per_pixel: np.ndarray) -> np.ndarray:  # a per-pixel map summed over each piece in the core
        return np.bincount(labels[core_rel].ravel(), weights=per_pixel[core_rel].ravel().astype(np.float64))[ids]

    score_sum = area_px.astype(np.float64) if prob is None else piece_sums(prob)
    class_sums = None
    if model.kind != "classical" and heads.shape[0] > 3:  # a multi-class model: per-class probability sums per piece
        class_sums = np.stack([piece_sums(h) for h in heads[3:]], axis=1)
    tc = _add(timings, "vectorize", tb)
    raw_core = raw[(slice(None), *core_rel)]
    meas = piece_measurements(labels[core_rel], ids, raw_core, t.core.row, t.core.col)
    valid_px = int(valid[core_rel].sum()) if valid is not None else _valid_pixels(raw_core, job.nodata)
    _write_part(part_path(job.workdir, t.index), t.index, ids, area_px, score_sum, geoms, meas, valid_px, class_sums)
    _add(timings, "measure", tc)
    return len(ids)


def _submit(model, job: TileJob, tiles: list[Tile], prepared: list[np.ndarray]):
    """Start the model on one batch of windows. Returns ``(pending, crops)``: where each window's own pixels
    lie in the model output, as ``(row, col, height, width)``.

    At the raster's edges a window lacks the halo of context it has elsewhere; the missing side is filled by
    mirroring the image (as if the whole scene were mirror-padded by the halo), so a pixel near the raster edge
    sees the same context whatever the tiling — the whole-image run pads its edges the same way. Windows
    smaller than the tile (last row/column) are then padded to the batch shape, beyond that halo.
    """
    if model.kind == "classical":  # pixelwise and local: no context to add, no batching needed
        h, w = prepared[0].shape[1:]
        return model.submit_heads(prepared[0][None]), [(0, 0, h, w)]
    size, halo = job.window_size, job.halo
    batch = np.zeros((len(prepared), prepared[0].shape[0], size, size), np.float32)
    crops = []
    for i, (t, p) in enumerate(zip(tiles, prepared)):
        h, w = p.shape[1:]
        top, left = halo - (t.core.row - t.window.row), halo - (t.core.col - t.window.col)
        bottom, right = halo - (t.window.row_end - t.core.row_end), halo - (t.window.col_end - t.core.col_end)
        p = np.pad(p, ((0, 0), (top, bottom), (left, right)), mode="reflect" if min(h, w) > 1 else "edge")
        ph, pw = size - p.shape[1], size - p.shape[2]
        batch[i] = np.pad(p, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(p.shape[1:]) > max(ph, pw) else "constant")
        crops.append((top, left, h, w))
    return model.submit_heads(batch), crops


def process_tiles(job: TileJob, indices: list[int]) -> dict:
    """Process a batch of tiles; returns counts and the seconds per step (read, model, instances, vectorize,
    measure: wall seconds, and CPU seconds as ``<step>_cpu``).

    Software-pipelined: batch k+1 is read and submitted to the model before batch k is post-processed, so on
    a GPU the forward pass of one batch runs while the CPU labels and vectorizes the previous one. ``model``
    counts the time spent submitting plus waiting for results (on a CPU: the whole forward pass).
    """
    import zarr

    grid = job.grid
    todo = [grid[i] for i in indices if not storage.exists(part_path(job.workdir, i))]
    timings = {k: 0.0 for s in STEPS for k in (s, f"{s}_cpu")}
    empty = [t for t in todo if t.index in job.skip]
    if empty:  # no tissue / all nodata: nothing to find; the stitch sees an empty part and zero labels
        _write_empty_parts(job, empty)
    todo = [t for t in todo if t.index not in job.skip]
    if not todo:
        return {"tiles": 0, "skipped": len(indices) - len(empty), "pieces": 0, "timings": timings, "pixels": 0,
                "empty": len(empty)}
    model = get_model(job.model, job.classical, job.device, job.threads, job.tta, job.inference)
    step = 1 if model.kind == "classical" else (job.batch_size or model.default_batch)
    batches = [todo[s : s + step] for s in range(0, len(todo), step)]
    win_arr = zarr.open_array(storage.zarr_store(storage.join(job.workdir, "windows.zarr")), mode="r+")
    pieces = 0
    pixels = 0
    pending = None
    valids: dict[int, np.ndarray] = {}
    for tiles in [*batches, None]:
        if tiles is not None:
            t0 = _clocks()
            norms, raws = _read_windows(job, tiles, valids)
            prepared = [model.prepare(n) for n in norms]
            t1 = _add(timings, "read", t0)
            submitted = (tiles, raws, *_submit(model, job, tiles, prepared))
            _add(timings, "model", t1)
        if pending is not None:
            p_tiles, p_raws, p_heads, crops = pending
            t0 = _clocks()
            out = p_heads.result()
            _add(timings, "model", t0)
            for i, (t, (r, c, h, w)) in enumerate(zip(p_tiles, crops)):
                pieces += _post_process(model, job, win_arr, t, out[i, :, r : r + h, c : c + w], p_raws[i], timings,
                                        valids.pop(t.index, None))
                pixels += t.core.height * t.core.width
        pending = submitted if tiles is not None else None
    return {"tiles": len(todo), "skipped": len(indices) - len(todo) - len(empty), "pieces": pieces, "timings": timings,
            "pixels": pixels, "empty": len(empty)}


def _write_empty_parts(job: TileJob, tiles: list[Tile]) -> None:
    """Part files with no pieces (the same columns as any other) for skipped tiles; valid_px 0 (the tissue
    mask, not the valid image area, measures a slide with tissue skipping)."""
    import zarr

    arr = zarr.open_array(storage.zarr_store(job.zarr_path, read_only=True), path="image", mode="r")
    raw = np.zeros((arr.shape[0], 0, 0), arr.dtype)
    meas = piece_measurements(np.zeros((0, 0), np.uint32), np.zeros(0, np.int64), raw, 0, 0)
    for t in tiles:
        _write_part(part_path(job.workdir, t.index), t.index, [], np.zeros(0, np.int64), np.zeros(0), [], meas, 0)


def _valid_pixels(core: np.ndarray, nodata: float | None) -> int:
    """Pixels of a tile core that hold image data (not nodata in every band): the scene's valid area."""
    if nodata is None:
        return int(core.shape[1] * core.shape[2])
    return int((~np.all(core == nodata, axis=0)).sum())
