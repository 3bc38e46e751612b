"""Box-level evaluation, as the NEON tree-crown benchmark (DeepForest) scores crowns.

Each predicted outline is reduced to its bounding box; predicted and true boxes are matched one to one
(Hungarian assignment on IoU, as DeepForest does) and a pair counts as a true positive at box IoU ≥ 0.4.
Precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN).

Truth boxes can be marked *not counted* (boxes cut by a tile edge, less than half inside): a prediction
matched to one of those is neither a true nor a false positive, and the box is never a miss.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["box_iou", "match_boxes", "box_counts", "boxes_of_labels", "box_scores", "BOX_IOU"]

BOX_IOU = 0.4  #: the NEON benchmark's threshold


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of boxes given as rows ``xmin, ymin, xmax, ymax``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_boxes(truth: np.ndarray, pred: np.ndarray, threshold: float = BOX_IOU) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(truth index, pred index, IoU)`` with IoU ≥ ``threshold`` (max total IoU)."""
    from scipy.optimize import linear_sum_assignment

    iou = box_iou(truth, pred)
    if iou.size == 0:
        return []
    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols) if iou[r, c] >= threshold]


def box_counts(truth: np.ndarray, pred: np.ndarray, counted: np.ndarray | None = None,
               threshold: float = BOX_IOU) -> tuple[int, int, int]:
    """(TP, FP, FN) of predicted boxes against true boxes (``counted``: which true boxes count)."""
    truth = np.asarray(truth, np.float64).reshape(-1, 4)
    pred = np.asarray(pred, np.float64).reshape(-1, 4)
    counted = np.ones(len(truth), bool) if counted is None else np.asarray(counted, bool)
    pairs = match_boxes(truth, pred, threshold)
    tp = sum(1 for r, _, _ in pairs if counted[r])
    ignored = sum(1 for r, _, _ in pairs if not counted[r])
    return tp, len(pred) - tp - ignored, int(counted.sum()) - tp


def boxes_of_labels(labels: np.ndarray) -> np.ndarray:
    """(N, 4) pixel-edge boxes ``xmin, ymin, xmax, ymax`` of the objects of a label image."""
    out = [(sl[1].start, sl[0].start, sl[1].stop, sl[0].stop) for sl in ndi.find_objects(labels) if sl is not None]
    return np.asarray(out, np.float64).reshape(-1, 4)


def box_scores(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    """Precision, recall and F1 from counts."""
    return {"tp": tp, "fp": fp, "fn": fn, "precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn),
            "f1": 2 * tp / max(1, 2 * tp + fp + fn)}
