"""Stage 2 (ingest + scene statistics): copy a raster into a zarr v3 store whose chunks are the tile grid, and gather the sample
for scene statistics in the same pass.

Blocks are read through the reader interface (:mod:`pipeline.io.sources`: GDAL, OpenSlide, tifffile, zarr) at
the working level and area-averaged to the working resolution (:mod:`pipeline.stages.resolution`), and written to disjoint chunks, so any number of workers can ingest
one scene in parallel without locks (zarr 3 has none). Each block also returns its pixels on a *global*
sampling lattice (every ``stride``-th row and column of the scene): the sample, and so the statistics, do not
depend on the tile size — a tiled run and a whole-image run normalise identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.io import storage
from pipeline.io.readers.base import Level
from pipeline.io.scene import SceneInfo
from pipeline.io.sources import open_source
from pipeline.models.normalize import apply_normalization, otsu, percentiles, to_model_channels
from pipeline.stages.domain import detect, image_domain
from pipeline.stages.resolution import area_resample, source_window

__all__ = ["IngestBlock", "plan_ingest", "create_store", "ingest_block", "sample_stride", "scene_statistics", "MAX_SAMPLE_PX"]

MAX_SAMPLE_PX = 1 << 22  # ~4 Mpx per band: percentiles and Otsu are stable far below this
BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class IngestBlock:
    row: int
    col: int
    height: int
    width: int


def sample_stride(height: int, width: int) -> int:
    return max(1, math.ceil(math.sqrt(height * width / MAX_SAMPLE_PX)))


def plan_ingest(info: SceneInfo, tile: int, needed: set[tuple[int, int]] | None = None) -> list[IngestBlock]:
    """Blocks of whole chunk rows, split in column runs of whole chunks to stay under ~64 MB each.

    ``needed``: (tile_row, tile_col) of the tiles to copy (tissue skipping); None = all."""
    itemsize = np.dtype(info.dtype).itemsize
    chunk_bytes = tile * tile * info.count * itemsize
    per_block = max(1, BLOCK_BYTES // max(chunk_bytes, 1))
    n_cols = math.ceil(info.width / tile)
    blocks = []
    for r in range(0, info.height, tile):
        h = min(tile, info.height - r)
        cols = [c for c in range(n_cols) if needed is None or (r // tile, c) in needed]
        runs: list[list[int]] = []
        for c in cols:  # consecutive chunk columns, at most per_block of them
            if runs and c == runs[-1][-1] + 1 and len(runs[-1]) < per_block:
                runs[-1].append(c)
            else:
                runs.append([c])
        for run in runs:
            col = run[0] * tile
            w = min(len(run) * tile, info.width - col)
            blocks.append(IngestBlock(r, col, h, w))
    return blocks


def create_store(zarr_path: str, info: SceneInfo, tile: int) -> None:
    """The working image (bands, y, x) in tile-sized chunks, and for sources that can hold invalid pixels
    (nodata, NaN, alpha/mask) a ``valid`` array (y, x; 1 = data) that tiles use to keep objects off nodata."""
    import zarr
    from zarr.codecs import ZstdCodec

    zarr.create_array(
        store=storage.zarr_store(zarr_path),
        name="image",
        shape=(info.count, info.height, info.width),
        chunks=(info.count, tile, tile),
        dtype=info.dtype,
        compressors=[ZstdCodec(level=1)],
        fill_value=0,
        attributes={"scene": info.as_attrs(), "tile": tile},
        dimension_names=("band", "y", "x"),
        overwrite=True,
    )
    if info.has_mask:
        zarr.create_array(store=storage.zarr_store(zarr_path), name="valid", shape=(info.height, info.width), chunks=(tile, tile),
                          dtype="uint8", compressors=[ZstdCodec(level=1)], fill_value=0, overwrite=True)


def read_working(info: SceneInfo, row: int, col: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A window of the working image: the source's level window, area-averaged, the chosen channels; and
    where it is valid (None when the source cannot hold invalid pixels)."""

    # One open source per worker (a slide is not re-opened for every block) — except GDAL's: a dataset kept open
    # keeps every block it has read in GDAL's block cache (up to GDAL_CACHEMAX, 5 % of RAM, per process), so a
    # worker that ingested half of a 24,000² scene carried ~0.6 GB of it through the tile stage (#29). Opening a
    # GeoTIFF per block costs milliseconds, and closing it frees its blocks.
    src = open_source(info.path, info.reader, info.series, cache=info.reader != "gdal")
    try:
        lv: Level = src.levels[info.level]
        r, c, hh, ww = source_window(lv, info.resample, row, col, h, w)
        data, mask = src.read_with_mask(info.level, r, c, hh, ww, list(info.channels) if info.channels is not None else None)
        valid = src.valid_pixels(data, mask) if info.has_mask else None
    finally:
        if not src.cached:
            src.close()
    if info.resample != 1.0:
        data = area_resample(data, info.resample, row, col, h, w, lv, info.dtype)
        if valid is not None:
            valid = area_resample(valid[None].astype(np.float32), info.resample, row, col, h, w, lv, "float32")[0] >= 0.5
    if valid is not None:
        if data.dtype.kind == "f":
            valid &= np.all(np.isfinite(data), axis=0)
        valid = np.ascontiguousarray(valid)
    return data, valid


def ingest_block(info: SceneInfo, zarr_path: str, block: IngestBlock, stride: int, tile: int) -> tuple[np.ndarray, list]:
    """Copy one block into the store. Returns its valid pixels on the global sampling lattice (bands, n)
    and ``[(tile_row, tile_col, valid_px), ...]`` for the tile cores it covers (all pixels when the source
    has no mask), from which all-nodata tiles are skipped."""
    import zarr

    data, valid = read_working(info, block.row, block.col, block.height, block.width)
    sl = (slice(block.row, block.row + block.height), slice(block.col, block.col + block.width))
    arr = zarr.open_array(storage.zarr_store(zarr_path), path="image", mode="r+")
    arr[:, sl[0], sl[1]] = data
    if valid is not None:
        zarr.open_array(storage.zarr_store(zarr_path), path="valid", mode="r+")[sl] = valid.astype(np.uint8)
    counts = []
    for c in range(0, block.width, tile):
        n = block.height * min(tile, block.width - c) if valid is None else int(valid[:, c : c + tile].sum())
        counts.append((block.row // tile, (block.col + c) // tile, n))
    r0 = (-block.row) % stride
    c0 = (-block.col) % stride
    sample = data[:, r0::stride, c0::stride]
    if valid is not None:
        return sample[:, valid[r0::stride, c0::stride]], counts
    return sample.reshape(data.shape[0], -1), counts


def scene_statistics(samples: list[np.ndarray], nodata=None, low: float = 1.0, high: float = 99.8,
                     threshold: float | None = None, low_ratio: float | None = None,
                     threshold_low: float | None = None, in_channels: int | None = None,
                     georeferenced: bool = False, fixed: list[tuple[float, float]] | None = None) -> dict:
    """Normalisation percentiles per band and the foreground thresholds of the classical model; with
    ``in_channels`` (the model's input channels) also the scene's ``domain`` (modality and the colour of the
    normalised pixels as the model sees them: :func:`pipeline.stages.domain.image_domain`), which the quality
    verdict compares with the model's training domain — from this sample, no extra pass over the image.

    The threshold is Otsu's on the normalised band mean of the sample (unless given); the hysteresis low
    threshold (unless given) lies ``low_ratio`` of the way from the background level (median of the sample
    below the threshold) up to it. Computed once per scene: per-tile thresholds make seams. ``fixed``: the
    ``(low, high)`` per band of a checkpoint with a fixed normalisation (an H&E model:
    :func:`pipeline.models.stain.fixed_percentiles`), used instead of the sample's percentiles.
    """
    sample = np.concatenate(samples, axis=1) if samples else np.zeros((1, 0))
    valid = np.ones(sample.shape[1], bool)
    if nodata is not None:
        valid = ~np.all(sample == nodata, axis=0)
    if sample.dtype.kind == "f":
        valid &= np.all(np.isfinite(sample), axis=0)
    s = sample[:, valid]
    pct = fixed or (percentiles(s[:, :, None], low, high) if s.size else [(0.0, 1.0)] * sample.shape[0])
    normalised = apply_normalization(s[:, None, :], pct)[:, 0, :] if s.size else np.zeros((sample.shape[0], 0), np.float32)
    norm = normalised.mean(axis=0)
    if threshold is None:
        t = otsu(norm)
        threshold = 0.5 if t is None else t  # a flat sample: half way up the normalised range
    if threshold_low is None and low_ratio is not None and low_ratio < 1:
        below = norm[norm <= threshold]
        bg = float(np.median(below)) if below.size else 0.0
        threshold_low = bg + low_ratio * (float(threshold) - bg)
    out = {"percentiles": [list(p) for p in pct], "threshold": float(threshold), "sample_px": int(s.shape[1]),
           "low": low, "high": high, "threshold_low": None if threshold_low is None else float(threshold_low)}
    if in_channels is not None and s.size:
        out["domain"] = image_domain(detect(s, georeferenced), to_model_channels(normalised[:, None, :], in_channels)[:, 0, :])
    return out
