"""Resample a scene onto a coarser or finer *working grid*, one block at a time, exactly as a whole-image
resample would.

The object-scale rule (:mod:`pipeline.stages.objectscale`) may run a model at, say, half the input's
resolution. The zarr store then holds the scene on that working grid, and every stage after ingest (tiles,
halo, stitch) works there unchanged, so a tiled run still equals an untiled one at the working resolution.
The working grid's affine transform and pixel size are the input's scaled, so polygons come out in the
input's own (level-0) coordinates and areas in real units.

Why a hand-written kernel: ingest writes the store in blocks whose extent depends on the tile size. Each
output pixel here is a fixed weighted sum of a fixed set of source pixels, summed in a fixed order, so it
does not depend on which block computed it (a windowed Gaussian or a BLAS product would drift by
rounding). The kernel is a triangle (bilinear) one widened by ``1/f`` when shrinking (antialiasing, as
PIL's and skimage's downscaling do).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.io.raster import SceneInfo

__all__ = ["working_shape", "working_info", "taps", "resample_block"]


def working_shape(height: int, width: int, factor: float) -> tuple[int, int]:
    """The working grid of a ``height × width`` scene scaled by ``factor`` (at least 1 × 1)."""
    return max(1, int(round(height * factor))), max(1, int(round(width * factor)))


def working_info(info: SceneInfo, factor: float) -> SceneInfo:
    """``info`` described on its working grid: size, affine transform and pixel size scaled so that pixel
    coordinates of the working grid map to the input's coordinates."""
    if factor == 1.0:
        return info
    h, w = working_shape(info.height, info.width, factor)
    fy, fx = h / info.height, w / info.width
    a, b, c, d, e, f = info.transform
    ps = (info.pixel_size_um[0] / fx, info.pixel_size_um[1] / fy) if info.pixel_size_um else None
    return dataclasses.replace(info, width=w, height=h, transform=(a / fx, b / fy, c, d / fx, e / fy, f), pixel_size_um=ps)


def taps(start: int, stop: int, n_src: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, (stop − start, K) each, of output pixels ``start:stop`` along one axis.

    A function of the output index only (not of the block): output pixel ``i``'s centre sits at source
    coordinate ``(i + 0.5) · n_src / n_out − 0.5``; weights fall off linearly over ``max(1, n_src / n_out)``
    source pixels and are renormalised where the kernel leaves the image.
    """
    scale = n_src / n_out
    support = max(1.0, scale)
    centres = (np.arange(start, stop, dtype=np.float64) + 0.5) * scale - 0.5
    k = int(np.ceil(2 * support)) + 1
    first = np.floor(centres - support).astype(np.int64) + 1
    idx = first[:, None] + np.arange(k)[None, :]
    w = np.maximum(0.0, 1.0 - np.abs(idx - centres[:, None]) / support)
    w[(idx < 0) | (idx >= n_src)] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, n_src - 1), w


def source_span(start: int, stop: int, n_src: int, n_out: int) -> tuple[int, int]:
    """The source range ``[lo, hi)`` that output pixels ``start:stop`` read."""
    idx, _ = taps(start, stop, n_src, n_out)
    return int(idx.min()), int(idx.max()) + 1


def _apply(src: np.ndarray, idx: np.ndarray, w: np.ndarray, offset: int, axis: int) -> np.ndarray:
    out = None
    for j in range(idx.shape[1]):  # fixed order of the taps: the same sum whichever block asks
        part = np.take(src, idx[:, j] - offset, axis=axis).astype(np.float64)
        shape = [1] * src.ndim
        shape[axis] = -1
        part *= w[:, j].reshape(shape)
        out = part if out is None else out + part
    return out


def resample_block(read, src_hw: tuple[int, int], out_hw: tuple[int, int], row: int, col: int, height: int,
                   width: int, dtype) -> np.ndarray:
    """Output block ``[row:row+height, col:col+width]`` of the working grid, (bands, height, width) in ``dtype``.

    ``read(row, col, height, width)`` returns a (bands, h, w) window of the source. Integer types are
    rounded (and clipped to the type's range); floats are kept.
    """
    (sh, sw), (oh, ow) = src_hw, out_hw
    ri, rw = taps(row, row + height, sh, oh)
    ci, cw = taps(col, col + width, sw, ow)
    r0, r1 = int(ri.min()), int(ri.max()) + 1
    c0, c1 = int(ci.min()), int(ci.max()) + 1
    src = read(r0, c0, r1 - r0, c1 - c0)
    out = _apply(_apply(src, ri, rw, r0, axis=1), ci, cw, c0, axis=2)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.clip(np.rint(out), info.min, info.max).astype(dt)
    return out.astype(dt)
