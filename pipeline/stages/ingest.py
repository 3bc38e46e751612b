"""Stage 1 and 2: copy a raster into a zarr v3 store whose chunks are the tile grid, and gather the sample
for scene statistics in the same pass.

Blocks are read with windowed GDAL reads and written to disjoint chunks, so any number of workers can ingest
one scene in parallel without locks (zarr 3 has none). Each block also returns its pixels on a *global*
sampling lattice (every ``stride``-th row and column of the scene): the sample, and so the statistics, do not
depend on the tile size — a tiled run and a whole-image run normalise identically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.io.raster import SceneInfo, open_raster, read_window

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


def plan_ingest(info: SceneInfo, tile: int) -> list[IngestBlock]:
    """Blocks of whole chunk rows, split in column runs of whole chunks to stay under ~64 MB each."""
    itemsize = np.dtype(info.dtype).itemsize
    chunk_bytes = tile * tile * info.count * itemsize
    per_block = max(1, BLOCK_BYTES // max(chunk_bytes, 1))
    n_cols = math.ceil(info.width / tile)
    blocks = []
    for r in range(0, info.height, tile):
        h = min(tile, info.height - r)
        for c0 in range(0, n_cols, per_block):
            col = c0 * tile
            w = min(per_block * tile, info.width - col)
            blocks.append(IngestBlock(r, col, h, w))
    return blocks


def create_store(zarr_path: str, info: SceneInfo, tile: int) -> None:
    import zarr
    from zarr.codecs import ZstdCodec

    zarr.create_array(
        store=zarr_path,
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


def ingest_block(src: str, zarr_path: str, block: IngestBlock, stride: int) -> np.ndarray:
    """Copy one block into the store; return its pixels on the global sampling lattice (bands, n)."""
    import zarr

    with open_raster(src) as ds:
        data = read_window(ds, block.row, block.col, block.height, block.width)
    arr = zarr.open_array(zarr_path, path="image", mode="r+")
    arr[:, block.row : block.row + block.height, block.col : block.col + block.width] = data
    r0 = (-block.row) % stride
    c0 = (-block.col) % stride
    return data[:, r0::stride, c0::stride].reshape(data.shape[0], -1)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    if values.size == 0 or np.all(values == values.flat[0]):
        return 0.5
    return float(threshold_otsu(values, nbins=256))


def scene_statistics(samples: list[np.ndarray], nodata=None, low: float = 1.0, high: float = 99.8,
                     threshold: float | None = None, low_ratio: float | None = None,
                     threshold_low: float | None = None) -> dict:
    """Normalisation percentiles per band and the foreground thresholds of the classical model.

    The threshold is Otsu's on the normalised band mean of the sample (unless given); the hysteresis low
    threshold (unless given) lies ``low_ratio`` of the way from the background level (median of the sample
    below the threshold) up to it. Computed once per scene: per-tile thresholds make seams.
    """
    from pipeline.stages.normalize import apply_normalization, percentiles

    sample = np.concatenate(samples, axis=1) if samples else np.zeros((1, 0))
    valid = np.ones(sample.shape[1], bool)
    if nodata is not None:
        valid = ~np.all(sample == nodata, axis=0)
    if sample.dtype.kind == "f":
        valid &= np.all(np.isfinite(sample), axis=0)
    s = sample[:, valid]
    pct = percentiles(s[:, :, None], low, high) if s.size else [(0.0, 1.0)] * sample.shape[0]
    norm = apply_normalization(s[:, None, :], pct)[:, 0, :].mean(axis=0) if s.size else np.zeros(0)
    if threshold is None:
        threshold = _otsu(norm)
    if threshold_low is None and low_ratio is not None and low_ratio < 1:
        below = norm[norm <= threshold]
        bg = float(np.median(below)) if below.size else 0.0
        threshold_low = bg + low_ratio * (float(threshold) - bg)
    return {"percentiles": [list(p) for p in pct], "threshold": float(threshold), "sample_px": int(s.shape[1]),
            "low": low, "high": high, "threshold_low": None if threshold_low is None else float(threshold_low)}
