"""Synthetic scenes of bright elliptical objects, written strip by strip (any size, bounded memory).

Objects come from a jittered grid of cells, each cell seeded from ``(seed, cell)``, so a strip can be
rendered without the rest of the scene and the scene is identical whatever the strip height. Used by the
demo (``seamline demo``), the stitching and out-of-core tests, and the benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Blob", "scene_blobs", "render", "write_scene"]


@dataclass(frozen=True)
class Blob:
    cy: float
    cx: float
    ry: float
    rx: float
    angle: float
    value: float


def scene_blobs(height: int, width: int, cell: int = 24, radius: tuple[float, float] = (4, 9), fill: float = 0.8,
                seed: int = 0, big: int = 0) -> list[Blob]:
    """All blobs of a scene: one per occupied cell plus ``big`` large ones (bigger than typical tiles)."""
    blobs = []
    for gy in range(math.ceil(height / cell)):
        for gx in range(math.ceil(width / cell)):
            blobs.extend(_cell_blobs(gy, gx, cell, radius, fill, seed))
    rng = np.random.default_rng([seed, 99])
    for _ in range(big):
        r = rng.uniform(0.15, 0.3) * min(height, width)
        blobs.append(Blob(rng.uniform(r, height - r), rng.uniform(r, width - r), r, r * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi), 0.9))
    return [b for b in blobs if 0 <= b.cy < height and 0 <= b.cx < width]


def _cell_blobs(gy: int, gx: int, cell: int, radius, fill, seed) -> list[Blob]:
    rng = np.random.default_rng([seed, gy, gx])
    if rng.random() > fill:
        return []
    ry, rx = rng.uniform(*radius, size=2)
    cy = gy * cell + cell / 2 + rng.uniform(-0.35, 0.35) * cell
    cx = gx * cell + cell / 2 + rng.uniform(-0.35, 0.35) * cell
    return [Blob(cy, cx, ry, rx, rng.uniform(0, np.pi), rng.uniform(0.55, 1.0))]


def render(blobs: list[Blob], row0: int, height: int, width: int) -> np.ndarray:
    """Float image in [0, 1] of rows ``[row0, row0 + height)``; returns (H, W) float32 with labels (H, W) int32."""
    img = np.zeros((height, width), np.float32)
    lab = np.zeros((height, width), np.int32)
    for i, b in enumerate(blobs, start=1):
        r = max(b.ry, b.rx) + 1
        y0, y1 = max(row0, int(b.cy - r)), min(row0 + height, int(b.cy + r) + 2)
        x0, x1 = max(0, int(b.cx - r)), min(width, int(b.cx + r) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy + 0.5 - b.cy, xx + 0.5 - b.cx
        c, s = math.cos(b.angle), math.sin(b.angle)
        u, v = (c * dx + s * dy) / b.rx, (-s * dx + c * dy) / b.ry
        d = u * u + v * v
        inside = d <= 1.0
        sl = (slice(y0 - row0, y1 - row0), slice(x0, x1))
        img[sl] = np.where(inside, np.maximum(img[sl], b.value * (1 - 0.3 * d)), img[sl])
        lab[sl] = np.where(inside, i, lab[sl])
    return img, lab


def _blobs_by_row(blobs: list[Blob]):
    order = sorted(range(len(blobs)), key=lambda i: blobs[i].cy)
    return [blobs[i] for i in order], np.array([blobs[i].cy for i in order]), np.array(order)


def write_scene(path: str | Path, height: int, width: int, *, dtype: str = "uint16", crs: str | None = "EPSG:32633",
                transform=None, seed: int = 0, cell: int = 24, radius=(4, 9), fill: float = 0.8, big: int = 0,
                noise: float = 0.02, strip: int = 512, labels_path: str | Path | None = None,
                pixel_size_um: float | None = None, bands: int = 1, blobs: list[Blob] | None = None,
                gain: float = 1.0) -> list[Blob]:
    """Write a tiled, compressed GeoTIFF (or a plain/OME TIFF when ``crs`` is None) strip by strip.

    ``blobs``: draw these instead of the scene's own (then ``seed`` only seeds the noise); ``gain`` multiplies
    the whole image, background and noise included (a brighter acquisition of the same place)."""
    import rasterio
    from rasterio.transform import Affine

    if blobs is None:
        blobs = scene_blobs(height, width, cell, radius, fill, seed, big)
    sorted_blobs, cys, _ = _blobs_by_row(blobs)
    rmax = max([max(b.ry, b.rx) for b in blobs], default=0) + 2
    scale = {"uint8": 250, "uint16": 4000, "float32": 1.0}[dtype]
    profile = dict(driver="GTiff", height=height, width=width, count=bands, dtype=dtype, tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", bigtiff="IF_SAFER")
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = transform or Affine(0.5, 0, 500000.0, 0, -0.5, 5_000_000.0)
    lab_ds = None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as ds:
            if labels_path is not None:
                lp = dict(profile, dtype="int32", count=1)
                lab_ds = rasterio.open(labels_path, "w", **lp)
            try:
                for row0 in range(0, height, strip):
                    h = min(strip, height - row0)
                    lo, hi = np.searchsorted(cys, [row0 - rmax, row0 + h + rmax])
                    idx = list(range(lo, hi))
                    img, lab = render([sorted_blobs[i] for i in idx], row0, h, width)
                    # Labels are the index in the full (unsorted) blob list + 1, for the oracle.
                    if lab_ds is not None:
                        ids = np.zeros(len(idx) + 1, np.int32)
                        ids[1:] = _order_ids(blobs, [sorted_blobs[i] for i in idx])
                        lab_ds.write(ids[lab], 1, window=rasterio.windows.Window(0, row0, width, h))
                    rng = np.random.default_rng([seed, 7, row0])
                    img = img + 0.05 + rng.normal(0, noise, img.shape).astype(np.float32)
                    out = np.clip(img * (scale * gain), 0, np.iinfo(dtype).max if dtype != "float32" else None).astype(dtype)
                    for b in range(bands):
                        ds.write(out, b + 1, window=rasterio.windows.Window(0, row0, width, h))
            finally:
                if lab_ds is not None:
                    lab_ds.close()
    if pixel_size_um is not None and crs is None:
        _add_ome(path, pixel_size_um)
    return blobs


def _order_ids(blobs: list[Blob], subset: list[Blob]) -> np.ndarray:
    pos = {id(b): i + 1 for i, b in enumerate(blobs)}
    return np.array([pos[id(b)] for b in subset], np.int32)


def _add_ome(path: Path, pixel_size_um: float) -> None:
    """Rewrite a small TIFF as OME-TIFF with a physical pixel size (demo and tests only: reads it whole)."""
    import tifffile

    data = tifffile.imread(path)
    tifffile.imwrite(path, data, ome=True, tile=(256, 256), compression="zlib",
                     metadata={"axes": "YX" if data.ndim == 2 else "CYX", "PhysicalSizeX": pixel_size_um,
                               "PhysicalSizeY": pixel_size_um, "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})


def write_periodic_scene(path: str | Path, size: int, *, block: int = 2048, seed: int = 0, dtype: str = "uint16",
                         crs: str | None = "EPSG:32633", **kw) -> int:
    """A ``size × size`` scene made by repeating one rendered ``block × block`` scene (fast at any size).

    For throughput and memory benchmarks, where the content only has to be realistic, not unique.
    Written strip by strip (bounded memory); returns the number of objects in one block.
    """
    import tempfile

    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window as RWindow

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td) / "block.tif"
        blobs = write_scene(tmp, block, block, dtype=dtype, crs=None, seed=seed, **kw)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(tmp) as b:
                tile = b.read(1)
    profile = dict(driver="GTiff", height=size, width=size, count=1, dtype=dtype, tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", predictor=2, bigtiff="YES")
    if crs is not None:
        profile |= {"crs": crs, "transform": Affine(0.5, 0, 500000.0, 0, -0.5, 5_000_000.0)}
    reps = -(-size // block)
    strip = np.tile(tile, (1, reps))[:, :size]
    with rasterio.open(path, "w", **profile) as ds:
        for r in range(0, size, block):
            h = min(block, size - r)
            ds.write(strip[:h], 1, window=RWindow(0, r, size, h))
    return len(blobs)


def varied_brightness_scene(size: int, *, seed: int = 0, spacing: int = 40, dim_fraction: float = 0.1,
                            dim_factor: float = 0.6, pair_fraction: float = 0.15, noise: float = 0.02,
                            background: float = 0.25):
    """A scene where object brightness varies: isolated objects on a jittered grid, a ``dim_fraction`` of them
    at ``dim_factor`` × the mean brightness of the others, and a ``pair_fraction`` of cells holding two
    touching bright objects (which must stay two), on a ``background`` level (tissue autofluorescence: it
    lifts the scene's Otsu threshold above the dim objects). Returns ``(image float32 in ~[0, 1], labels int32,
    dim ids, pair id tuples)``; label ``i`` is ``blobs[i - 1]``."""
    rng = np.random.default_rng([seed, 61])
    blobs: list[Blob] = []
    dim: list[int] = []
    pairs: list[tuple[int, int]] = []
    n = size // spacing
    for gy in range(n):
        for gx in range(n):
            cy = gy * spacing + spacing / 2 + rng.uniform(-3, 3)
            cx = gx * spacing + spacing / 2 + rng.uniform(-3, 3)
            u = rng.random()
            if u < pair_fraction:  # two bright objects side by side, touching
                r = rng.uniform(5, 7)
                a = rng.uniform(0, np.pi)
                dx, dy = 0.9 * r * math.cos(a), 0.9 * r * math.sin(a)
                for sgn in (-1, 1):
                    blobs.append(Blob(cy + sgn * dy, cx + sgn * dx, r, r, 0.0, rng.uniform(0.8, 1.0)))
                pairs.append((len(blobs) - 1, len(blobs)))
                continue
            ry, rx = rng.uniform(5, 9, size=2)
            is_dim = u < pair_fraction + dim_fraction
            blobs.append(Blob(cy, cx, ry, rx, rng.uniform(0, np.pi), 0.0 if is_dim else rng.uniform(0.8, 1.0)))
            if is_dim:
                dim.append(len(blobs))
    from scipy import ndimage as ndi

    img, lab = render(blobs, 0, size, size)
    img = ndi.gaussian_filter(img, 1.5)  # optics: soft edges
    dim_ids = np.zeros(len(blobs) + 1, bool)
    dim_ids[dim] = True
    bright_mean = float(img[(lab > 0) & ~dim_ids[lab]].mean())  # mean brightness of the other objects' pixels
    blobs = [Blob(b.cy, b.cx, b.ry, b.rx, b.angle, 1.0) if b.value == 0 else b for b in blobs]
    dim_img, _ = render([b if i + 1 in set(dim) else Blob(b.cy, b.cx, b.ry, b.rx, b.angle, 0.0) for i, b in enumerate(blobs)], 0, size, size)
    dim_img = ndi.gaussian_filter(dim_img, 1.5)
    dim_mean = float(dim_img[dim_ids[lab] & (lab > 0)].mean()) if dim else 1.0
    img = np.maximum(img, dim_img * dim_factor * bright_mean / dim_mean)  # dim objects: dim_factor x the mean
    img = np.maximum(img, background) + np.random.default_rng([seed, 62]).normal(0, noise, img.shape).astype(np.float32)
    return img.astype(np.float32), lab, dim, pairs
