"""From per-pixel maps to labelled instances (marker-controlled watershed).

Both models end here, so that tiled and untiled runs agree:

* every threshold is passed in (scene statistics, computed once per scene — never per tile, which
  makes seams);
* everything here is *local*: the label of a pixel depends only on a neighbourhood about the size of
  the object it lies in. A tile whose halo is larger than the objects therefore labels its core exactly
  as a whole-image run would, which is what makes :mod:`pipeline.stages.stitch` exact.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["classical_instances", "heads_to_instances"]


def _drop_small(labels: np.ndarray, min_area: int, max_area: int = 0) -> np.ndarray:
    """Labels without the objects under ``min_area`` px or, when ``max_area`` > 0, over it."""
    if (min_area <= 1 and max_area <= 0) or labels.max() == 0:
        return labels
    counts = np.bincount(labels.ravel())
    small = (counts < min_area) | ((counts > max_area) if max_area > 0 else False)
    small[0] = False
    if small.any():
        labels = labels.copy()
        labels[small[labels]] = 0
    return labels


def _merge_shallow(w: np.ndarray, height: np.ndarray, ratio: float) -> np.ndarray:
    """Merge neighbouring basins separated by no real neck.

    Two basins are one object when the highest point of their common border (the saddle) is at least
    ``ratio`` times the lower of their two peaks: a neck test that does not depend on the object's size,
    so bumps along the ridge of a large object do not split it, while touching round objects (saddle
    well below both peaks) stay apart.
    """
    ids = np.unique(w)
    ids = ids[ids != 0]
    if ids.size < 2:
        return w
    peak = dict(zip(ids.tolist(), np.asarray(ndi.maximum(height, w, ids)).tolist()))
    saddle: dict[tuple[int, int], float] = {}
    for a, b, ha, hb in (
        (w[:, :-1], w[:, 1:], height[:, :-1], height[:, 1:]),
        (w[:-1, :], w[1:, :], height[:-1, :], height[1:, :]),
    ):
        sel = (a != b) & (a > 0) & (b > 0)
        if not sel.any():
            continue
        la, lb = np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel])
        hv = np.minimum(ha[sel], hb[sel])
        for x, y, v in zip(la.tolist(), lb.tolist(), hv.tolist()):
            if v > saddle.get((x, y), -np.inf):
                saddle[(x, y)] = v
    parent = {i: i for i in ids.tolist()}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Greedy: most convincing merges first; a merged basin's peak is the higher of the two.
    order = sorted(saddle.items(), key=lambda kv: -kv[1] / max(min(peak[kv[0][0]], peak[kv[0][1]]), 1e-9))
    for (x, y), v in order:
        rx, ry = find(x), find(y)
        if rx != ry and v >= ratio * min(peak[rx], peak[ry]):
            keep, drop = min(rx, ry), max(rx, ry)
            parent[drop] = keep
            peak[keep] = max(peak[keep], peak[drop])
    lut = np.zeros(int(ids.max()) + 1, w.dtype)
    for i in ids.tolist():
        lut[i] = find(i)
    return lut[w]


def _watershed(surface: np.ndarray, markers: np.ndarray, mask: np.ndarray, merge_ratio: float | None = None) -> np.ndarray:
    """Marker watershed that gives the same labels for an object wherever it sits in the array.

    scikit-image breaks ties on plateaus by the order of its global priority queue, which depends on every
    other object in the array: the same object can be split differently in a tile and in the whole image.
    Flooding each connected component of the mask on its own bounding-box crop makes the input, and so the
    result, identical in both. Components with a single marker need no flooding at all (the common case);
    components without a marker are dropped (as scikit-image does).
    """
    from skimage.segmentation import watershed

    comp, n_comp = ndi.label(mask)  # 4-connectivity, as the flooding below
    out = np.zeros(mask.shape, np.uint32)
    if n_comp == 0:
        return out
    m = markers > 0
    pair = np.unique(comp[m].astype(np.int64) * (1 << 32) + markers[m].astype(np.int64))
    pc, pm = pair >> 32, pair & 0xFFFFFFFF
    n_markers = np.bincount(pc, minlength=n_comp + 1)
    lut = np.zeros(n_comp + 1, np.uint32)
    single = n_markers == 1
    lut[pc[single[pc]]] = pm[single[pc]]
    out = lut[comp]
    multi = np.nonzero(n_markers >= 2)[0]
    if multi.size:
        slices = ndi.find_objects(comp)
        for c in multi:
            sl = slices[c - 1]
            sub = comp[sl] == c
            w = watershed(surface[sl], np.where(sub, markers[sl], 0), mask=sub, connectivity=1)
            if merge_ratio is not None:
                w = _merge_shallow(w, -surface[sl], merge_ratio)
            out[sl][sub] = w[sub].astype(np.uint32)
    return out


def classical_instances(
    image: np.ndarray,
    threshold: float,
    *,
    sigma: float = 1.0,
    h: float = 1.5,
    min_area: int = 8,
    merge_ratio: float = 0.75,
    low_threshold: float | None = None,
) -> np.ndarray:
    """Global threshold + distance-transform watershed: instances of bright objects, no weights needed.

    With ``low_threshold`` (hysteresis between two scene-global thresholds): a connected region above the
    low threshold whose mean lies below ``threshold`` is a *dim* object — noise may lift a few of its pixels
    above ``threshold``, which alone would give a fragment — and is kept with its low-threshold extent;
    brighter regions keep their high-threshold extent, exactly as without hysteresis. So dim objects are
    found while bright neighbours are never joined through their dimmer rims (a dim region and a bright one
    are different connected components of the low mask, hence never touch). A dim object touching a bright
    one above the low threshold is not recovered.

    Parameters
    ----------
    image : (H, W) float array, already normalised with scene statistics.
    threshold : the scene-global foreground threshold (for example Otsu on the scene sample).
    sigma : Gaussian smoothing of the image before thresholding, in pixels (denoises; local).
    h : minimum dynamic of a distance-transform maximum to seed its own object, in pixels. Two touching
        round objects are split when their neck is at least ``h`` narrower than the smaller radius.
    min_area : objects smaller than this (pixels) are dropped.
    merge_ratio : neighbouring basins whose saddle is at least this fraction of the lower peak (in
        distance-transform pixels) are one object; see :func:`_merge_shallow`.
    low_threshold : the hysteresis low threshold (scene-global too); None or >= ``threshold``: off.

    Returns
    -------
    (H, W) uint32 labels, 0 = background.
    """
    from skimage.morphology import h_maxima

    img = ndi.gaussian_filter(image.astype(np.float32, copy=False), sigma) if sigma > 0 else image
    fg = img > threshold
    if low_threshold is not None and low_threshold < threshold:
        low = img > low_threshold
        comp, n = ndi.label(low)  # 4-connectivity, as the watershed
        mean = np.bincount(comp.ravel(), img.ravel().astype(np.float64), n + 1) / np.maximum(np.bincount(comp.ravel(), minlength=n + 1), 1)
        dim = mean <= threshold
        dim[0] = False
        fg = np.where(dim[comp], low, fg)
    if not fg.any():
        return np.zeros(image.shape, np.uint32)
    dist = ndi.distance_transform_edt(fg).astype(np.float32)
    # Quantise (quarter pixels) so that h-maxima is not confused by float noise on plateaus; uint16 makes the
    # reconstruction a third faster than int32 with identical maxima (objects up to 16,383 px in radius).
    dist_q = np.minimum(np.round(dist * 4), 65535).astype(np.uint16)
    peaks = h_maxima(dist_q, max(1, int(round(h * 4)))).astype(bool) & fg
    markers, _ = ndi.label(peaks)
    labels = _watershed(-dist, markers, fg, merge_ratio)
    return _drop_small(labels.astype(np.uint32, copy=False), min_area)


def heads_to_instances(
    prob_fg: np.ndarray,
    prob_boundary: np.ndarray,
    distance: np.ndarray,
    *,
    fg_threshold: float = 0.5,
    marker_threshold: float = 0.5,
    boundary_threshold: float = 0.5,
    min_marker_area: int = 4,
    min_area: int = 8,
    max_area: int = 0,
) -> np.ndarray:
    """Marker watershed on the three network heads.

    Markers are the object cores: predicted distance above ``marker_threshold``, not on a boundary.
    Each marker is flooded down the predicted distance within the foreground mask. A foreground blob
    with no marker (a very small object) becomes an instance of its own. Objects under ``min_area`` px are
    dropped, and over ``max_area`` px when it is set (> 0): the H&E model's keratin and dense stroma sheets,
    many times any nucleus it learned (docs/MODEL.md).
    """
    fg = prob_fg > fg_threshold
    if not fg.any():
        return np.zeros(prob_fg.shape, np.uint32)
    core = fg & (distance > marker_threshold) & (prob_boundary < boundary_threshold)
    markers, n = ndi.label(core)
    markers = _drop_small(markers.astype(np.uint32), min_marker_area).astype(np.int32)
    labels = _watershed(-distance, markers, fg).astype(np.uint32)
    # Foreground blobs that no marker reached: keep them as instances of their own.
    rest = fg & (labels == 0)
    if rest.any():
        extra, _ = ndi.label(rest)
        extra = extra.astype(np.uint32)
        extra[extra > 0] += labels.max()
        labels = np.where(extra > 0, extra, labels)
    return _drop_small(labels, min_area, max_area)
