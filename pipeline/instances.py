"""From per-pixel maps to labelled instances (marker-controlled watershed).

Both models end here, so that tiled and untiled runs agree:

* every threshold is passed in (scene statistics, computed once per scene — never per tile, which
  makes seams, NOTES lesson 4);
* everything here is *local*: the label of a pixel depends only on a neighbourhood about the size of
  the object it lies in. A tile whose halo is larger than the objects therefore labels its core exactly
  as a whole-image run would, which is what makes :mod:`pipeline.stitch` exact.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["classical_instances", "heads_to_instances", "instance_scores", "relabel_sequential"]


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Relabel to 1..N in raster order of first appearance (deterministic), as uint32."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.uint32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint32)
    return lut[labels]


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    if min_area <= 1 or labels.max() == 0:
        return labels
    counts = np.bincount(labels.ravel())
    small = counts < min_area
    small[0] = False
    if small.any():
        labels = labels.copy()
        labels[small[labels]] = 0
    return labels


def _watershed(surface: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from skimage.segmentation import watershed

    return watershed(surface, markers, mask=mask, connectivity=1)


def classical_instances(
    image: np.ndarray,
    threshold: float,
    *,
    sigma: float = 1.0,
    h: float = 1.5,
    min_area: int = 8,
) -> np.ndarray:
    """Global threshold + distance-transform watershed: instances of bright objects, no weights needed.

    Parameters
    ----------
    image : (H, W) float array, already normalised with scene statistics.
    threshold : the scene-global foreground threshold (for example Otsu on the scene sample).
    sigma : Gaussian smoothing of the image before thresholding, in pixels (denoises; local).
    h : minimum dynamic of a distance-transform maximum to seed its own object, in pixels. Two touching
        round objects are split when their neck is at least ``h`` narrower than the smaller radius.
    min_area : objects smaller than this (pixels) are dropped.

    Returns
    -------
    (H, W) uint32 labels, 0 = background.
    """
    from skimage.morphology import h_maxima

    img = ndi.gaussian_filter(image.astype(np.float32, copy=False), sigma) if sigma > 0 else image
    fg = img > threshold
    if not fg.any():
        return np.zeros(image.shape, np.uint32)
    dist = ndi.distance_transform_edt(fg).astype(np.float32)
    # Quantise so that h-maxima is not confused by float noise on plateaus.
    dist_q = np.round(dist * 4).astype(np.int32)
    peaks = h_maxima(dist_q, max(1, int(round(h * 4)))).astype(bool) & fg
    markers, _ = ndi.label(peaks)
    labels = _watershed(-dist, markers, fg)
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
) -> np.ndarray:
    """Marker watershed on the three network heads.

    Markers are the object cores: predicted distance above ``marker_threshold``, not on a boundary.
    Each marker is flooded down the predicted distance within the foreground mask. A foreground blob
    with no marker (a very small object) becomes an instance of its own.
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
    return _drop_small(labels, min_area)


def instance_scores(labels: np.ndarray, prob: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ids, score_sum)`` per label; the score of an object is its mean foreground probability.

    Sums (not means) are returned so that pieces of one object from several tiles can be combined
    exactly: score = sum of sums / sum of pixel counts.
    """
    flat = labels.ravel()
    n = int(flat.max()) + 1 if flat.size else 1
    if prob is None:
        sums = np.bincount(flat, minlength=n).astype(np.float64)
    else:
        sums = np.bincount(flat, weights=prob.ravel().astype(np.float64), minlength=n)
    ids = np.nonzero(np.bincount(flat, minlength=n))[0]
    ids = ids[ids != 0]
    return ids, sums[ids]
