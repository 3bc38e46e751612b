"""Instance-segmentation metrics on label images.

Matching is one-to-one on IoU. For IoU thresholds ≥ 0.5 a match is unique (two objects can't both
overlap one by more than half), so matching is exact without an assignment solver; below 0.5 the
Hungarian algorithm maximises total IoU.

Overlaps are counted sparsely (only pairs of objects that share pixels), so a scene with 10⁵ objects on
each side costs memory in proportion to its pixels, not to n_gt × n_pred; :func:`iou_matrix` still returns
the dense matrix for small images (training validation).

Definitions follow the microscopy literature (StarDist, Cellpose):

* AP at τ = TP / (TP + FP + FN)
* F1 = 2TP / (2TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN)
* panoptic quality = Σ IoU(TP) / (TP + FP/2 + FN/2)
* a *split*: a ground-truth object to which two or more predictions are assigned, a prediction being
  assigned to the ground-truth object that holds most of it if that is ≥ 50 % of the prediction; a *merge*:
  a prediction that contains ≥ 50 % of each of two or more ground-truth objects. Both are independent of the
  IoU threshold, so a ground truth cut into two exact halves is a split even though one half matches it at
  IoU 0.5. Areas include the pixels on background (see :func:`split_merge_counts`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.errors import InputError

__all__ = ["iou_matrix", "match", "counts_at", "MatchStats", "evaluate_labels", "split_merge_counts", "THRESHOLDS",
           "Matching", "match_labels", "stats_from_iou"]

THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2).tolist())
_DENSE_PAIRS = 1 << 24  # below this many (gt, pred) combinations count pairs with bincount, else np.unique


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object ids in ascending order (0 excluded) and an index image: 0 background, 1..n the objects.

    Label 0 is background wherever it sorts (negative ids would otherwise push it off position 0). Small
    non-negative integer ids use a lookup table, linear in the pixels; anything else falls back to a sort.
    """
    flat = np.asarray(labels).ravel()
    if flat.size and flat.dtype.kind in "biu":
        lo, hi = int(flat.min()), int(flat.max())
        if lo >= 0 and hi <= max(1 << 20, 4 * flat.size):
            flat = flat.astype(np.intp, copy=False)
            present = np.bincount(flat, minlength=hi + 1) > 0
            present[0] = False
            ids = np.flatnonzero(present)
            lut = np.zeros(hi + 1, np.int64)
            lut[ids] = np.arange(1, ids.size + 1)
            return ids.astype(np.int64), lut[flat].reshape(np.shape(labels))
    uniq, inv = np.unique(flat, return_inverse=True)
    bg = uniq == 0
    lut = np.cumsum(~bg)  # position -> 1-based object index, background -> (ignored) previous index
    lut[bg] = 0
    return uniq[~bg], lut[inv.ravel()].reshape(np.shape(labels))


def _overlaps(gt: np.ndarray, pred: np.ndarray):
    """Sparse overlaps: ``(gt_ids, pred_ids, gt_area, pred_area, gi, pi, count)`` over object pairs that
    share at least one pixel (``gi``/``pi`` index ``gt_ids``/``pred_ids``). Areas count every pixel of an
    object, including those over the other image's background."""
    if np.shape(gt) != np.shape(pred):
        raise InputError(f"label images differ in shape: ground truth {np.shape(gt)}, prediction {np.shape(pred)}; "
                         "rasterize both onto the same pixel grid")
    g_ids, g = _compact(gt)
    p_ids, p = _compact(pred)
    ng, npr = g_ids.size, p_ids.size
    g_area = np.bincount(g.ravel(), minlength=ng + 1)[1:]
    p_area = np.bincount(p.ravel(), minlength=npr + 1)[1:]
    both = (g > 0) & (p > 0)
    key = (g[both].astype(np.int64) - 1) * npr + (p[both] - 1)
    if ng * npr <= _DENSE_PAIRS:
        counts = np.bincount(key, minlength=ng * npr)
        key = np.flatnonzero(counts)
        count = counts[key]
    else:
        key, count = np.unique(key, return_counts=True)
    gi, pi = np.divmod(key, max(npr, 1))
    return g_ids, p_ids, g_area, p_area, gi, pi, count.astype(np.int64)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IoU between every ground-truth and predicted object.

    Returns ``(iou, overlap, gt_ids, pred_ids)`` with ``iou`` of shape (n_gt, n_pred); label 0 is background.
    Dense: meant for tiles and validation crops; whole scenes go through :func:`match_labels`.
    """
    g_ids, p_ids, g_area, p_area, gi, pi, c = _overlaps(gt, pred)
    ov = np.zeros((g_ids.size, p_ids.size), np.int64)
    ov[gi, pi] = c
    iou = np.zeros(ov.shape)
    iou[gi, pi] = c / (g_area[gi] + p_area[pi] - c)
    return iou, ov, g_ids, p_ids


@dataclass(frozen=True)
class MatchStats:
    """Counts and derived scores at one IoU threshold (an empty denominator scores 1: nothing to get wrong)."""

    threshold: float
    tp: int
    fp: int
    fn: int
    sum_iou: float

    @property
    def ap(self) -> float:
        d = self.tp + self.fp + self.fn
        return self.tp / d if d else 1.0

    @property
    def precision(self) -> float:
        d = self.tp + self.fp
        return self.tp / d if d else 1.0

    @property
    def recall(self) -> float:
        d = self.tp + self.fn
        return self.tp / d if d else 1.0

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0

    @property
    def pq(self) -> float:
        d = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.sum_iou / d if d else 1.0

    @property
    def mean_matched_iou(self) -> float:
        return self.sum_iou / self.tp if self.tp else 0.0

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        for k in ("ap", "precision", "recall", "f1", "pq", "mean_matched_iou"):
            d[k] = getattr(self, k)
        return d


def match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches with IoU ≥ threshold (and > 0); returns index arrays ``(gt_idx, pred_idx)``."""
    if iou.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    if threshold >= 0.5:
        gi, pi = np.nonzero(iou >= threshold)
        # Unique by construction for IoU > 0.5; at exactly 0.5 keep the first of ties.
        _, first = np.unique(gi, return_index=True)
        gi, pi = gi[first], pi[first]
        _, first = np.unique(pi, return_index=True)
        return gi[first], pi[first]
    from scipy.optimize import linear_sum_assignment

    cost = np.where(iou >= threshold, iou, 0.0)
    gi, pi = linear_sum_assignment(-cost)
    keep = (iou[gi, pi] >= threshold) & (iou[gi, pi] > 0)  # at threshold 0 disjoint pairs are no match
    return gi[keep], pi[keep]


def counts_at(gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int]:
    """(TP, FP, FN) of two label images at one IoU threshold."""
    iou, _, _, _ = iou_matrix(gt, pred)
    gi, _ = match(iou, threshold)
    return int(gi.size), int(iou.shape[1] - gi.size), int(iou.shape[0] - gi.size)


def _match_pairs(gi, pi, iou, threshold: float, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`match` on sparse pairs; returns ``(gt_idx, pred_idx, iou)`` of the matches."""
    if threshold < 0.5:  # the assignment problem needs the dense matrix
        dense = np.zeros(shape)
        dense[gi, pi] = iou
        a, b = match(dense, threshold)
        return a, b, dense[a, b]
    keep = iou >= threshold
    a, b, w = gi[keep], pi[keep], iou[keep]
    order = np.lexsort((b, a))  # row-major, as np.nonzero on the dense matrix: same tie-breaking
    a, b, w = a[order], b[order], w[order]
    _, first = np.unique(a, return_index=True)
    a, b, w = a[first], b[first], w[first]
    _, first = np.unique(b, return_index=True)
    return a[first], b[first], w[first]


def _split_merge_flags(gi, pi, ov, g_area, p_area) -> tuple[np.ndarray, np.ndarray]:
    """Per ground-truth object "is split", per prediction "is a merge" (see the module docstring)."""
    split = np.zeros(len(g_area), bool)
    merge = np.zeros(len(p_area), bool)
    if len(ov) == 0:
        return split, merge
    gi, pi, ov = np.asarray(gi), np.asarray(pi), np.asarray(ov, np.int64)
    order = np.lexsort((gi, -ov, pi))  # per prediction: largest overlap first, lowest gt index on ties
    ps, gs, os_ = pi[order], gi[order], ov[order]
    first = np.r_[True, ps[1:] != ps[:-1]]
    bp, bg, bo = ps[first], gs[first], os_[first]
    assigned = bg[2 * bo >= np.asarray(p_area)[bp]]  # integer test of "≥ 50 % of the prediction"
    split = np.bincount(assigned, minlength=len(g_area)) >= 2
    covers = 2 * ov >= np.asarray(g_area)[gi]
    merge = np.bincount(pi[covers], minlength=len(p_area)) >= 2
    return split, merge


def split_merge_counts(overlap: np.ndarray, gt_area=None, pred_area=None) -> tuple[int, int]:
    """Count splits and merges from the overlap (pixel-count) matrix of (gt, pred).

    A prediction is *assigned* to the ground-truth object holding most of it (if that is ≥ 50 % of the
    prediction). A ground-truth object with two or more assigned predictions is a split. A prediction that
    holds ≥ 50 % of each of two or more ground-truth objects is a merge.

    Pass the full object areas: ``overlap`` (as :func:`iou_matrix` returns it) has no background row or
    column, so its sums leave out pixels over background and would make a prediction lying mostly on
    background count as "inside" the object it grazes. Without areas the sums are used.
    """
    overlap = np.asarray(overlap)
    if overlap.size == 0:
        return 0, 0
    g_area = overlap.sum(1) if gt_area is None else np.asarray(gt_area)
    p_area = overlap.sum(0) if pred_area is None else np.asarray(pred_area)
    gi, pi = np.nonzero(overlap)
    split, merge = _split_merge_flags(gi, pi, overlap[gi, pi], g_area, p_area)
    return int(split.sum()), int(merge.sum())


@dataclass(frozen=True)
class Matching:
    """The matches of one pair of label images at every threshold, kept so that the counts can be taken
    over any subset of objects (e.g. seam vs interior) without matching again."""

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    thresholds: tuple[float, ...]
    matches: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # per threshold: gt_idx, pred_idx, iou
    split_gt: np.ndarray  # bool per ground-truth object
    merge_pred: np.ndarray  # bool per predicted object

    def stats(self, gt_mask: np.ndarray | None = None, pred_mask: np.ndarray | None = None) -> dict:
        """Metrics over a subset of the objects, from the matches made over all of them.

        Matching within a subset would let an object near its edge match nothing (its partner being in the
        other subset) and count twice as wrong. Instead TP and FN (and splits) follow the ground-truth
        object's mask, FP (and merges) the prediction's: a match whose sides fall in different subsets is
        a TP of the ground truth's subset and no FP of the prediction's.

        Parameters
        ----------
        gt_mask, pred_mask : ndarray of bool, optional
            One entry per ``gt_ids`` / ``pred_ids``; default all objects.

        Returns
        -------
        dict
            ``n_gt, n_pred, per_threshold`` (list of :class:`MatchStats`), ``splits, merges``.
        """
        gm = np.ones(self.gt_ids.size, bool) if gt_mask is None else np.asarray(gt_mask, bool)
        pm = np.ones(self.pred_ids.size, bool) if pred_mask is None else np.asarray(pred_mask, bool)
        n_gt, n_pred = int(gm.sum()), int(pm.sum())
        per = []
        for t, (a, b, w) in zip(self.thresholds, self.matches):
            in_g = gm[a]
            tp = int(in_g.sum())
            per.append(MatchStats(float(t), tp, n_pred - int(pm[b].sum()), n_gt - tp, float(w[in_g].sum())))
        return {"n_gt": n_gt, "n_pred": n_pred, "per_threshold": per,
                "splits": int(self.split_gt[gm].sum()), "merges": int(self.merge_pred[pm].sum())}


def match_labels(gt: np.ndarray, pred: np.ndarray, thresholds=THRESHOLDS) -> Matching:
    """Match two label images at every threshold, keeping the matches for per-subset counts.

    Parameters
    ----------
    gt, pred : ndarray, 2-D, same shape
        Label images, 0 = background; ids need not be consecutive (any integers, or integral floats).
    thresholds : sequence of float
        IoU thresholds; those ≥ 0.5 use the exact greedy matching, lower ones the Hungarian algorithm.

    Returns
    -------
    Matching

    Raises
    ------
    InputError
        If the shapes differ.
    """
    g_ids, p_ids, g_area, p_area, gi, pi, c = _overlaps(gt, pred)
    iou = c / np.maximum(g_area[gi] + p_area[pi] - c, 1)
    shape = (g_ids.size, p_ids.size)
    matches = tuple(_match_pairs(gi, pi, iou, float(t), shape) for t in thresholds)
    split, merge = _split_merge_flags(gi, pi, c, g_area, p_area)
    return Matching(g_ids, p_ids, tuple(float(t) for t in thresholds), matches, split, merge)


def evaluate_labels(gt: np.ndarray, pred: np.ndarray, thresholds=THRESHOLDS) -> dict:
    """All metrics for one pair of label images: ``n_gt, n_pred, per_threshold, splits, merges``."""
    return match_labels(gt, pred, thresholds).stats()


def stats_from_iou(iou: np.ndarray, ov: np.ndarray, thresholds=THRESHOLDS, gt_area=None, pred_area=None) -> dict:
    """As :func:`evaluate_labels` from dense matrices (areas as in :func:`split_merge_counts`)."""
    n_gt, n_pred = iou.shape
    per = []
    for t in thresholds:
        gi, pi = match(iou, t)
        per.append(MatchStats(float(t), int(gi.size), int(n_pred - gi.size), int(n_gt - gi.size), float(iou[gi, pi].sum())))
    splits, merges = split_merge_counts(ov, gt_area, pred_area)
    return {"n_gt": int(n_gt), "n_pred": int(n_pred), "per_threshold": per, "splits": splits, "merges": merges}
