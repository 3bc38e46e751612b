"""Distance transform and h-maxima of a foreground at the cost of its objects, not of its window.

The classical model's distance transform and h-maxima (scikit-image's reconstruction sorts every pixel, seed
and mask) run over the whole window, background included: on a sparse scene — a few hundred objects on black —
nearly all of the instance step is spent on pixels that can never hold an object.

Both results are local to each 8-connected component of the foreground, so the components are cut out on
their bounding boxes and laid side by side, each with a ring of background, on one small canvas, which is
transformed in one call each; the values are then put back where they came from. Exactly, pixel for pixel:

* distance transform: the nearest background pixel of a pixel ``p`` of component ``C`` lies in ``C``'s box
  grown by one pixel — walk from ``p`` towards any background pixel along a monotone 4-path inside the
  rectangle they span: the first pixel that leaves ``C`` is 4-adjacent to ``C``, so it is background (were it
  foreground it would belong to ``C``), and it is no farther. So the ring and the box hold the answer, and
  foreground of other components inside the box, zeroed on the canvas, is never nearer than it. Components
  that touch the window's edge are the exception — beyond the edge there is no background, but the canvas
  would put its ring there — and are transformed on their own box, as it lies in the window.
* h-maxima (8-neighbourhood): the map is 0 outside the foreground and every path between two components
  crosses a 0, which lowers whatever it carries to the clipped floor of the reconstruction: nothing passes
  between components, or between a slot and the canvas ring. scikit-image's ``h > ptp`` shortcut sees the
  same range on both (0 up to the same maximum) as long as the window holds some background.

When the boxes cover most of the window anyway (a dense window), or the window has no background pixel, the
whole window is transformed as before.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["distance_and_hmaxima", "shelf_slots"]

#: Above this share of the window's pixels the canvas saves too little to pay for the packing.
PACK_MAX_SHARE = 1.0
_EIGHT = np.ones((3, 3), bool)


def _quantised(dist: np.ndarray) -> np.ndarray:
    """Quarter pixels, so that h-maxima is not confused by float noise on plateaus; uint16 makes the
    reconstruction a third faster than int32 with identical maxima (objects up to 16,383 px in radius)."""
    return np.minimum(np.round(dist * 4), 65535).astype(np.uint16)


def _whole(fg: np.ndarray, hq: int) -> tuple[np.ndarray, np.ndarray]:
    from skimage.morphology import h_maxima

    dist = ndi.distance_transform_edt(fg).astype(np.float32)
    return dist, h_maxima(_quantised(dist), hq).astype(bool) & fg


def shelf_slots(heights: np.ndarray, widths: np.ndarray, canvas_w: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Shelf packing: slots taken tallest first, left to right in rows of ``canvas_w``. Returns each slot's
    top-left corner (rows, cols) and the canvas height."""
    rows = np.zeros(len(heights), np.int64)
    cols = np.zeros(len(heights), np.int64)
    top = x = shelf_h = 0
    for i in np.argsort(-heights, kind="stable").tolist():
        h, w = int(heights[i]), int(widths[i])
        if x + w > canvas_w and x > 0:
            top, x, shelf_h = top + shelf_h, 0, 0
        rows[i], cols[i] = top, x
        x += w
        shelf_h = max(shelf_h, h)
    return rows, cols, top + shelf_h


def distance_and_hmaxima(fg: np.ndarray, hq: int) -> tuple[np.ndarray, np.ndarray]:
    """``dist = distance_transform_edt(fg)`` (float32) and ``h_maxima(quantised dist, hq) & fg`` (bool), as
    computed over the whole window, at the cost of the foreground's components."""
    from skimage.morphology import h_maxima

    if fg.all() or not fg.any():
        return _whole(fg, hq)
    lab, n = ndi.label(fg, structure=_EIGHT)
    boxes = np.array([[s[0].start, s[0].stop, s[1].start, s[1].stop] for s in ndi.find_objects(lab)], np.int64)
    heights, widths = boxes[:, 1] - boxes[:, 0] + 2, boxes[:, 3] - boxes[:, 2] + 2  # the box and its ring
    canvas_w = max(int(widths.max()), fg.shape[1])
    slot_r, slot_c, canvas_h = shelf_slots(heights, widths, canvas_w)
    if canvas_h * canvas_w > PACK_MAX_SHARE * fg.size:
        return _whole(fg, hq)
    rr, cc = np.nonzero(fg)
    k = lab[rr, cc] - 1
    pr = rr - boxes[k, 0] + slot_r[k] + 1  # each pixel's place on the canvas
    pc = cc - boxes[k, 2] + slot_c[k] + 1
    canvas = np.zeros((canvas_h, canvas_w), bool)
    canvas[pr, pc] = True
    dist = np.zeros(fg.shape, np.float32)
    dist[rr, cc] = ndi.distance_transform_edt(canvas)[pr, pc]
    h, w = fg.shape
    edge = np.nonzero((boxes[:, 0] == 0) | (boxes[:, 2] == 0) | (boxes[:, 1] == h) | (boxes[:, 3] == w))[0]
    for i in edge.tolist():  # no background beyond the window's edge: their own box, as it lies in the window
        r0, r1 = max(int(boxes[i, 0]) - 1, 0), min(int(boxes[i, 1]) + 1, h)
        c0, c1 = max(int(boxes[i, 2]) - 1, 0), min(int(boxes[i, 3]) + 1, w)
        m = lab[r0:r1, c0:c1] == i + 1
        dist[r0:r1, c0:c1][m] = ndi.distance_transform_edt(m)[m]
    dq = np.zeros((canvas_h, canvas_w), np.uint16)
    dq[pr, pc] = _quantised(dist[rr, cc])
    peaks = np.zeros(fg.shape, bool)
    peaks[rr, cc] = h_maxima(dq, hq)[pr, pc].astype(bool)
    return dist, peaks
