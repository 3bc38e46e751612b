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

from pipeline.models.packed import distance_and_hmaxima, shelf_slots

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
    peaks = np.asarray(ndi.maximum(height, w, ids), np.float64)
    peak = dict(zip(ids.tolist(), peaks.tolist()))
    # The saddle of each pair of touching basins: the highest of min(height) over the border pixel pairs between
    # them. Pairs are taken in the order their first border pixel comes (rows, then columns), which is how ties
    # in the merge order below are broken.
    la, lb, hv = [], [], []
    for a, b, ha, hb in (
        (w[:, :-1], w[:, 1:], height[:, :-1], height[:, 1:]),
        (w[:-1, :], w[1:, :], height[:-1, :], height[1:, :]),
    ):
        sel = (a != b) & (a > 0) & (b > 0)
        la.append(np.minimum(a[sel], b[sel]))
        lb.append(np.maximum(a[sel], b[sel]))
        hv.append(np.minimum(ha[sel], hb[sel]))
    x_all, y_all = np.concatenate(la).astype(np.int64), np.concatenate(lb).astype(np.int64)
    pairs: list = []
    if x_all.size:
        _, first, inv = np.unique(x_all * (int(ids.max()) + 1) + y_all, return_index=True, return_inverse=True)
        saddle = np.full(first.size, -np.inf)
        np.maximum.at(saddle, inv.ravel(), np.concatenate(hv).astype(np.float64))
        xs, ys = x_all[first], y_all[first]
        peak_of = np.zeros(int(ids.max()) + 1)
        peak_of[ids] = peaks
        # Greedy: most convincing merges first (highest saddle for the lower peak); ties in first-seen order.
        conviction = -saddle / np.maximum(np.minimum(peak_of[xs], peak_of[ys]), 1e-9)
        order = np.lexsort((first, conviction))
        pairs = list(zip(xs[order].tolist(), ys[order].tolist(), saddle[order].tolist()))
    parent = {i: i for i in ids.tolist()}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for x, y, v in pairs:  # a merged basin's peak is the higher of the two
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
        floods = []
        for c in multi.tolist():
            sl = slices[c - 1]
            sub = comp[sl] == c
            floods.append((sl, sub, watershed(surface[sl], np.where(sub, markers[sl], 0), mask=sub, connectivity=1)))
        if merge_ratio is not None:
            floods = _merge_on_canvas(floods, surface, merge_ratio)
        for sl, sub, w in floods:
            out[sl][sub] = w[sub].astype(np.uint32)
    return out


def _merge_on_canvas(floods: list, surface: np.ndarray, ratio: float) -> list:
    """:func:`_merge_shallow` of every flooded component, in one call: the components are laid side by side on
    a canvas, each with a ring of background, so no two of them touch. Nothing passes between them, and each
    one's border pairs keep their order (rows, then columns) relative to each other: the same merges as one
    call per component, without a call's fixed cost per component (most of the time in a dense window)."""
    heights = np.array([sl[0].stop - sl[0].start + 2 for sl, _, _ in floods], np.int64)
    widths = np.array([sl[1].stop - sl[1].start + 2 for sl, _, _ in floods], np.int64)
    canvas_w = max(int(widths.max()), surface.shape[1])
    rows, cols, canvas_h = shelf_slots(heights, widths, canvas_w)
    lab = np.zeros((canvas_h, canvas_w), floods[0][2].dtype)
    height = np.zeros((canvas_h, canvas_w), surface.dtype)
    slots = []
    for (sl, sub, w), r, c in zip(floods, rows.tolist(), cols.tolist()):
        dst = (slice(r + 1, r + 1 + sub.shape[0]), slice(c + 1, c + 1 + sub.shape[1]))
        lab[dst][sub] = w[sub]
        height[dst][sub] = -surface[sl][sub]
        slots.append(dst)
    merged = _merge_shallow(lab, height, ratio)
    return [(sl, sub, merged[dst]) for (sl, sub, _), dst in zip(floods, slots)]


def _foreground(img: np.ndarray, threshold: float, low_threshold: float | None) -> np.ndarray:
    """The foreground of :func:`classical_instances`: above ``threshold``, and with hysteresis (``low_threshold``
    below it) every connected region above ``low_threshold`` whose mean stays at or below ``threshold`` with
    its whole low extent.

    A low region without a pixel above ``threshold`` has its mean below it by construction, so only the
    regions holding some of the foreground need their mean — and the sums run over the low mask's pixels
    only: the cost follows the objects (dim and bright), not the window.
    """
    fg = img > threshold
    if low_threshold is None or low_threshold >= threshold:
        return fg
    low = img > low_threshold  # contains fg
    comp, n = ndi.label(low)  # 4-connectivity, as the watershed
    c = comp[low]
    total = np.bincount(c, img[low].astype(np.float64), n + 1)
    count = np.bincount(c, minlength=n + 1)
    dim = total / np.maximum(count, 1) <= threshold  # the mean, summed in pixel order as over the whole window
    dim[0] = False
    return np.where(dim[comp], low, fg)


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
    img = ndi.gaussian_filter(image.astype(np.float32, copy=False), sigma) if sigma > 0 else image
    fg = _foreground(img, threshold, low_threshold)
    if not fg.any():
        return np.zeros(image.shape, np.uint32)
    # the distance map and its h-maxima (quarter pixels) where the objects are, not over the whole window
    dist, peaks = distance_and_hmaxima(fg, max(1, int(round(h * 4))))
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
