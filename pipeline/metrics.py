"""Instance-segmentation metrics on label images.

Matching is one-to-one on IoU. For IoU thresholds ≥ 0.5 a match is unique (two objects can't both
overlap one by more than half), so matching is exact without an assignment solver; below 0.5 the
Hungarian algorithm maximises total IoU.

Definitions follow the microscopy literature (StarDist, Cellpose):

* AP at τ = TP / (TP + FP + FN)
* F1 = 2TP / (2TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN)
* panoptic quality = Σ IoU(TP) / (TP + FP/2 + FN/2)
* a *split*: a ground-truth object covered (≥ 50 % of the predicted piece inside it) by two or more
  predictions of which none matches it; a *merge*: a prediction that covers two or more ground-truth
  objects (≥ 50 % of each... see :func:`split_merge_counts`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse

__all__ = ["iou_matrix", "match", "MatchStats", "evaluate_labels", "split_merge_counts", "THRESHOLDS"]

THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2).tolist())


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, inv = np.unique(labels.ravel(), return_inverse=True)
    return ids, inv.reshape(labels.shape)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IoU between every ground-truth and predicted object.

    Returns ``(iou, overlap, gt_ids, pred_ids)`` with ``iou`` of shape (n_gt, n_pred); label 0 is background.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} differs from prediction shape {pred.shape}")
    g_ids, g = _compact(gt)
    p_ids, p = _compact(pred)
    ov = sparse.coo_matrix(
        (np.ones(g.size, np.int64), (g.ravel(), p.ravel())), shape=(g_ids.size, p_ids.size)
    ).toarray()
    g_has0 = g_ids.size and g_ids[0] == 0
    p_has0 = p_ids.size and p_ids[0] == 0
    g_area = ov.sum(1)
    p_area = ov.sum(0)
    ov = ov[1 if g_has0 else 0 :, 1 if p_has0 else 0 :]
    g_area = g_area[1 if g_has0 else 0 :]
    p_area = p_area[1 if p_has0 else 0 :]
    union = g_area[:, None] + p_area[None, :] - ov
    iou = np.where(union > 0, ov / np.maximum(union, 1), 0.0)
    return iou, ov, g_ids[1 if g_has0 else 0 :], p_ids[1 if p_has0 else 0 :]


@dataclass(frozen=True)
class MatchStats:
    """Counts and derived scores at one IoU threshold."""

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
    """One-to-one matches with IoU ≥ threshold; returns index arrays ``(gt_idx, pred_idx)``."""
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
    keep = iou[gi, pi] >= threshold
    return gi[keep], pi[keep]


def split_merge_counts(overlap: np.ndarray) -> tuple[int, int]:
    """Count splits and merges from the overlap (pixel-count) matrix of (gt, pred).

    A prediction is *assigned* to the ground-truth object holding most of it (if that is ≥ 50 % of the
    prediction). A ground-truth object with two or more assigned predictions is a split. A prediction that
    holds ≥ 50 % of each of two or more ground-truth objects is a merge.
    """
    if overlap.size == 0:
        return 0, 0
    p_area = overlap.sum(0)
    g_area = overlap.sum(1)
    best = overlap.argmax(0)
    frac = overlap[best, np.arange(overlap.shape[1])] / np.maximum(p_area, 1)
    assigned = best[frac >= 0.5]
    splits = int((np.bincount(assigned, minlength=overlap.shape[0]) >= 2).sum())
    covers = overlap / np.maximum(g_area[:, None], 1) >= 0.5
    merges = int((covers.sum(0) >= 2).sum())
    return splits, merges


def evaluate_labels(gt: np.ndarray, pred: np.ndarray, thresholds=THRESHOLDS) -> dict:
    """All metrics for one pair of label images (or for pre-accumulated counts, see :mod:`evaluate`)."""
    iou, ov, _, _ = iou_matrix(gt, pred)
    return stats_from_iou(iou, ov, thresholds)


def stats_from_iou(iou: np.ndarray, ov: np.ndarray, thresholds=THRESHOLDS) -> dict:
    n_gt, n_pred = iou.shape
    per = []
    for t in thresholds:
        gi, pi = match(iou, t)
        per.append(MatchStats(float(t), int(gi.size), int(n_pred - gi.size), int(n_gt - gi.size), float(iou[gi, pi].sum())))
    splits, merges = split_merge_counts(ov)
    return {"n_gt": int(n_gt), "n_pred": int(n_pred), "per_threshold": per, "splits": splits, "merges": merges}
