"""Shared drawing pieces for the quicklook and the report's crops: the display stretch and outlines of polygons
drawn onto a small RGB image, in the one class palette (:mod:`pipeline.io.palette`).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from pipeline.io.palette import PALETTE

__all__ = ["stretch", "to_rgb", "world_to_pixel", "iter_outlines", "draw_outlines"]

def stretch(block: np.ndarray, percentiles: Sequence[Sequence[float]]) -> np.ndarray:
    """(bands, y, x) values → float32 in 0..1 with the scene's own (low, high) percentiles per band."""
    out = np.empty(block.shape, np.float32)
    for b in range(block.shape[0]):
        lo, hi = percentiles[min(b, len(percentiles) - 1)]
        scale = 1.0 / (hi - lo) if hi > lo else 1.0
        out[b] = block[b]  # to float first: integer arithmetic would wrap values below `lo` round to white
        out[b] -= np.float32(lo)
        out[b] *= scale
    return np.clip(out, 0.0, 1.0, out=out)


def to_rgb(unit: np.ndarray) -> np.ndarray:
    """(bands, y, x) in 0..1 → (y, x, 3) uint8: the first three bands as RGB, otherwise the first as grey."""
    pick = unit[:3] if unit.shape[0] >= 3 else np.repeat(unit[:1], 3, axis=0)
    return np.ascontiguousarray((np.moveaxis(pick, 0, -1) * 255.0 + 0.5).astype(np.uint8))


def world_to_pixel(transform: Sequence[float]):
    """The inverse of a scene's affine transform (a, b, c, d, e, f): output coordinates → pixel (col, row)."""
    from affine import Affine

    return ~Affine(*transform[:6])


def iter_outlines(geoms: np.ndarray, inverse, scale: float, offset: tuple[float, float] = (0.0, 0.0)) -> Iterator[tuple[int, np.ndarray]]:
    """Every ring (exteriors and holes) of ``geoms`` in image coordinates: (index of its geometry, (n, 2) xy).

    ``inverse`` maps output coordinates to scene pixels; then ``offset`` (scene pixels) is subtracted and the
    result divided by ``scale`` (scene pixels per image pixel). Vectorised: one pass through shapely.
    """
    import shapely

    if len(geoms) == 0:
        return
    parts, pidx = shapely.get_parts(geoms, return_index=True)
    lines, lidx = shapely.get_parts(shapely.boundary(parts), return_index=True)
    coords, cidx = shapely.get_coordinates(lines, return_index=True)
    if len(coords) == 0:
        return
    a, b, c, d, e, f = inverse.a, inverse.b, inverse.c, inverse.d, inverse.e, inverse.f
    x = (a * coords[:, 0] + b * coords[:, 1] + c - offset[0]) / scale
    y = (d * coords[:, 0] + e * coords[:, 1] + f - offset[1]) / scale
    xy = np.stack([x, y], axis=1)
    starts = np.flatnonzero(np.r_[True, cidx[1:] != cidx[:-1]])
    ends = np.r_[starts[1:], len(cidx)]
    owner = pidx[lidx[cidx[starts]]]
    for s, t, o in zip(starts.tolist(), ends.tolist(), owner.tolist()):
        yield o, xy[s:t]


def draw_outlines(draw, geoms: np.ndarray, classes: np.ndarray, colours: dict[str, tuple[int, int, int]], inverse,
                  scale: float, offset: tuple[float, float] = (0.0, 0.0), width: int = 1) -> None:
    """Draw the outline of every polygon onto a PIL ``ImageDraw`` in its class colour."""
    fallback = PALETTE[0]
    cols = [colours.get(str(c), fallback) for c in classes]
    for i, xy in iter_outlines(geoms, inverse, scale, offset):
        # PIL draws pixel centres at integer coordinates; polygon vertices lie on pixel corners.
        pts = (xy - 0.5).ravel().tolist()
        if len(pts) >= 4:
            draw.line(pts, fill=cols[i], width=width)
