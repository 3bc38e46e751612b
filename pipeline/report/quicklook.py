"""The quicklook: the whole scene at most 2048 px on its long side, outlines drawn in class colours.

Made out of core: the image is block-averaged from the zarr store block by block (each block a few tiles,
a few tens of MB), and the polygons are streamed from the GeoParquet file batch by batch — neither the full
image nor all objects are ever in memory. The same pass over the polygons counts objects per cell, which the
report uses to pick its zoomed crops (the densest area, the busiest tile seam).

For a georeferenced scene the quicklook is also written as a small Cloud-Optimized GeoTIFF whose transform
is the scene's scaled by the reduction factor, so QGIS places it exactly over the full-resolution data.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.report.render import draw_outlines, stretch, to_rgb, world_to_pixel

__all__ = ["Quicklook", "MAX_SIDE", "CELL", "reduction_factor", "downsample_store", "make_quicklook", "write_png", "write_cog"]

MAX_SIDE = 2048
CELL = 256  # scene pixels per side of a density cell (= the size of a zoomed crop)
BATCH_ROWS = 50_000


@dataclass
class Quicklook:
    image: np.ndarray  # (h, w, 3) uint8, outlines drawn
    factor: int  # scene pixels per quicklook pixel
    density: np.ndarray  # objects (by centroid) per CELL × CELL scene cell
    seam_density: np.ndarray  # objects crossing a tile seam, per cell
    objects: int = 0
    classes: dict[str, int] = field(default_factory=dict)


def reduction_factor(height: int, width: int, max_side: int = MAX_SIDE) -> int:
    return max(1, math.ceil(max(height, width) / max_side))


def _block_mean(arr, r0: int, r1: int, c0: int, c1: int, f: int, nodata) -> np.ndarray:
    """Mean of every f × f cell of one block (partial cells at the scene's edge averaged over what exists)."""
    data = np.asarray(arr[:, r0:r1, c0:c1])
    b, h, w = data.shape
    valid = np.ones((h, w), np.float32) if nodata is None else np.all(data != nodata, axis=0).astype(np.float32)
    x = data.astype(np.float32) * valid
    H, W = math.ceil(h / f) * f, math.ceil(w / f) * f
    if (H, W) != (h, w):
        x = np.pad(x, ((0, 0), (0, H - h), (0, W - w)))
        valid = np.pad(valid, ((0, H - h), (0, W - w)))
    s = x.reshape(b, H // f, f, W // f, f).sum(axis=(2, 4))
    n = valid.reshape(H // f, f, W // f, f).sum(axis=(1, 3))
    out = s / np.maximum(n, 1)
    if nodata is not None:
        out[:, n == 0] = np.nan
    return out


def downsample_store(zarr_path: str, f: int, nodata=None, threads: int = 2) -> np.ndarray:
    """(bands, ceil(H/f), ceil(W/f)) float32 block means of the store's ``image`` array, read block by block
    (blocks aligned to f, about one tile each, read by a few threads: zarr decompresses outside the GIL)."""
    import zarr

    arr = zarr.open_array(zarr_path, path="image", mode="r")
    bands, height, width = arr.shape
    tile = int(arr.chunks[1])
    step = max(1, math.ceil(tile / f)) * f
    out = np.zeros((bands, math.ceil(height / f), math.ceil(width / f)), np.float32)
    blocks = [(r, c) for r in range(0, height, step) for c in range(0, width, step)]

    def one(rc):
        r, c = rc
        out[:, r // f: r // f + math.ceil(min(step, height - r) / f), c // f: c // f + math.ceil(min(step, width - c) / f)] = \
            _block_mean(arr, r, min(r + step, height), c, min(c + step, width), f, nodata)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        list(ex.map(one, blocks))
    return out


def make_quicklook(zarr_path: str, parquet_path: str, transform: Sequence[float], percentiles, colours: dict,
                   tile: int, nodata=None, max_side: int = MAX_SIDE) -> Quicklook:
    """Downsample the scene, stretch it for display and draw every object's outline in its class colour."""
    import pyarrow.parquet as pq
    import shapely
    import zarr
    from PIL import Image, ImageDraw

    arr = zarr.open_array(zarr_path, path="image", mode="r")
    _, height, width = arr.shape
    f = reduction_factor(height, width, max_side)
    mean = downsample_store(zarr_path, f, nodata)
    missing = np.isnan(mean).any(axis=0)
    rgb = to_rgb(stretch(np.nan_to_num(mean), percentiles))
    rgb[missing] = 0
    del mean
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    inv = world_to_pixel(transform)
    density = np.zeros((math.ceil(height / CELL), math.ceil(width / CELL)), np.int64)
    seam = np.zeros_like(density)
    counts: dict[str, int] = {}
    n = 0
    pf = pq.ParquetFile(parquet_path)
    for rb in pf.iter_batches(batch_size=BATCH_ROWS, columns=["class", "geometry"]):
        geoms = shapely.from_wkb(rb.column("geometry").to_numpy(zero_copy_only=False))
        classes = rb.column("class").to_numpy(zero_copy_only=False)
        draw_outlines(draw, geoms, classes, colours, inv, f)
        n += len(geoms)
        for c, k in zip(*np.unique(classes.astype(str), return_counts=True)):
            counts[str(c)] = counts.get(str(c), 0) + int(k)
        # pixel-space boxes and centres of the objects, for the density grids
        b = shapely.bounds(geoms)
        xs = np.stack([b[:, 0], b[:, 2], b[:, 0], b[:, 2]])
        ys = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3]])
        px = inv.a * xs + inv.b * ys + inv.c
        py = inv.d * xs + inv.e * ys + inv.f
        x0, x1, y0, y1 = px.min(0), px.max(0), py.min(0), py.max(0)
        cx = np.clip(((x0 + x1) / 2 // CELL).astype(np.int64), 0, density.shape[1] - 1)
        cy = np.clip(((y0 + y1) / 2 // CELL).astype(np.int64), 0, density.shape[0] - 1)
        np.add.at(density, (cy, cx), 1)
        crosses = (np.floor(x0 / tile) != np.floor((x1 - 1e-6) / tile)) | (np.floor(y0 / tile) != np.floor((y1 - 1e-6) / tile))
        np.add.at(seam, (cy[crosses], cx[crosses]), 1)
    return Quicklook(np.asarray(img), f, density, seam, n, counts)


def _tmp(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def write_png(image: np.ndarray, dest: Path) -> Path:
    """PNG under a temporary name, renamed into place when complete."""
    from PIL import Image

    tmp = _tmp(dest)
    try:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=3)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def write_cog(image: np.ndarray, factor: int, transform: Sequence[float], crs_wkt: str, dest: Path) -> Path:
    """The quicklook as a Cloud-Optimized GeoTIFF (RGB, deflate, internal overviews) on the scene's CRS, its
    pixels ``factor`` times the scene's: QGIS places it over the full-resolution outputs."""
    import rasterio
    from affine import Affine
    from rasterio.enums import ColorInterp

    t = Affine(*transform[:6]) * Affine.scale(factor)
    h, w, _ = image.shape
    tmp = _tmp(dest)
    try:
        with rasterio.open(tmp, "w", driver="COG", width=w, height=h, count=3, dtype="uint8", crs=crs_wkt,
                           transform=t, compress="DEFLATE") as ds:
            ds.write(np.moveaxis(image, -1, 0))
            ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
