"""The global shift between two dates' object sets (co-registration error), estimated from the objects.

Two acquisitions of one place are rarely registered to better than a pixel or two, and a shift of one pixel
already costs a 10-pixel object a fifth of its IoU. So before objects are matched one to one by overlap, the
shift is estimated and removed.

How: every object of date 1 *votes* for the displacement to each object of date 2 whose centroid lies within
``max_shift`` and whose area is within the area tolerance (the same object seen twice has about the same
size). The votes of true pairs agree — they all point at the shift — while votes between neighbours scatter
over the disc; the peak of the 2-D vote histogram is the shift (this is the cross-correlation of the two
centroid sets, i.e. phase correlation of the rasterised objects reduced to their centres). The estimate is
then refined to sub-pixel precision as the median of the votes near the peak. Votes are plain arrays, so an
out-of-core run gathers them strip by strip (:func:`displacement_votes`) and decides once (:func:`shift_from_votes`).

It compares objects, not pixels: brightness, season and sensor do not enter, only where objects are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.spatial import cKDTree

__all__ = ["Shift", "displacement_votes", "shift_from_votes", "estimate_shift", "MIN_VOTES"]

MIN_VOTES = 10  # fewer agreeing votes than this: no shift is estimated (reported as such)


@dataclass(frozen=True)
class Shift:
    """Displacement of date 2 relative to date 1 in map units (add it to date-1 coordinates to land on date 2)."""

    dx: float
    dy: float
    votes: int  # votes within the peak: the object pairs the estimate rests on
    estimated: bool = True

    @property
    def length(self) -> float:
        return float(np.hypot(self.dx, self.dy))

    def as_dict(self, pixel: float | None = None) -> dict:
        d = {"dx": self.dx, "dy": self.dy, "length": self.length, "votes": self.votes, "estimated": self.estimated}
        if pixel:
            d |= {"dx_px": self.dx / pixel, "dy_px": self.dy / pixel, "pixel": pixel}
        return d


def displacement_votes(old_xy: np.ndarray, old_area: np.ndarray, new_xy: np.ndarray, new_area: np.ndarray,
                       max_shift: float, area_tolerance: float) -> np.ndarray:
    """(n, 2) displacements ``new - old`` of every pair of centroids closer than ``max_shift`` whose areas
    differ by less than the factor ``area_tolerance``."""
    if len(old_xy) == 0 or len(new_xy) == 0 or max_shift <= 0:
        return np.zeros((0, 2))
    tree = cKDTree(new_xy)
    pairs = cKDTree(old_xy).query_ball_tree(tree, r=max_shift)
    counts = np.fromiter((len(p) for p in pairs), np.int64, len(pairs))
    if counts.sum() == 0:
        return np.zeros((0, 2))
    i = np.repeat(np.arange(len(pairs)), counts)
    j = np.fromiter((k for p in pairs for k in p), np.int64, int(counts.sum()))
    ratio = np.maximum(new_area[j], 1e-300) / np.maximum(old_area[i], 1e-300)
    ok = (ratio < area_tolerance) & (ratio > 1.0 / area_tolerance)
    return new_xy[j[ok]] - old_xy[i[ok]]


def shift_from_votes(votes: np.ndarray, max_shift: float, bin_size: float) -> Shift:
    """The peak of the vote histogram (bins of ``bin_size``, a 3 × 3 box sum so a shift on a bin border is
    not split), refined to the median of the votes within 1.5 bins of it."""
    if len(votes) < MIN_VOTES or bin_size <= 0:
        return Shift(0.0, 0.0, int(len(votes)), estimated=False)
    n = max(1, int(np.ceil(max_shift / bin_size)))
    edges = np.linspace(-n * bin_size, n * bin_size, 2 * n + 1)
    h, _, _ = np.histogram2d(votes[:, 0], votes[:, 1], bins=[edges, edges])

    smooth = uniform_filter(h, size=3, mode="constant")
    ix, iy = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    px, py = (edges[ix] + edges[ix + 1]) / 2, (edges[iy] + edges[iy + 1]) / 2
    for _ in range(3):  # re-centre on the median of the votes near the peak
        near = np.hypot(votes[:, 0] - px, votes[:, 1] - py) <= 1.5 * bin_size
        if near.sum() < MIN_VOTES:
            return Shift(0.0, 0.0, int(near.sum()), estimated=False)
        px, py = float(np.median(votes[near, 0])), float(np.median(votes[near, 1]))
    return Shift(px, py, int(near.sum()))


def estimate_shift(old_xy: np.ndarray, old_area: np.ndarray, new_xy: np.ndarray, new_area: np.ndarray,
                   max_shift: float, bin_size: float, area_tolerance: float = 1.3) -> Shift:
    """:func:`displacement_votes` then :func:`shift_from_votes` on arrays in memory."""
    votes = displacement_votes(old_xy, old_area, new_xy, new_area, max_shift, area_tolerance)
    return shift_from_votes(votes, max_shift, bin_size)
