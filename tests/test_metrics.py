"""Metrics on hand-made label images whose answers can be worked out on paper.

Each case pins one way a prediction can be wrong (missing, extra, shifted, split, merged object) so that a
regression in matching or in a formula shows up as one failing test with an obvious cause.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.errors import InputError
from pipeline.evaluation.metrics import (
    THRESHOLDS,
    evaluate_labels,
    iou_matrix,
    match,
    match_labels,
    split_merge_counts,
    stats_from_iou,
)


def three_squares() -> np.ndarray:
    lab = np.zeros((40, 40), np.int32)
    lab[2:10, 2:10] = 1
    lab[15:25, 15:25] = 2
    lab[30:38, 5:13] = 3
    return lab


def at(result: dict, t: float):
    """The MatchStats at threshold ``t``."""
    return next(s for s in result["per_threshold"] if abs(s.threshold - t) < 1e-9)


def test_thresholds_are_coco_range():
    assert THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_perfect_prediction():
    gt = three_squares()
    r = evaluate_labels(gt, gt * 7)  # ids differ, objects don't
    assert (r["n_gt"], r["n_pred"], r["splits"], r["merges"]) == (3, 3, 0, 0)
    for s in r["per_threshold"]:
        assert (s.tp, s.fp, s.fn) == (3, 0, 0)
        assert s.ap == 1.0 and s.pq == 1.0 and s.f1 == 1.0 and s.mean_matched_iou == 1.0


def test_missing_object_is_one_fn():
    gt = three_squares()
    pred = np.where(gt == 3, 0, gt)
    s = at(evaluate_labels(gt, pred), 0.5)
    assert (s.tp, s.fp, s.fn) == (2, 0, 1)
    assert s.ap == pytest.approx(2 / 3) and s.recall == pytest.approx(2 / 3) and s.precision == 1.0
    assert s.f1 == pytest.approx(4 / 5) and s.pq == pytest.approx(2 / 2.5)


def test_extra_object_is_one_fp():
    gt = three_squares()
    pred = gt.copy()
    pred[30:35, 30:35] = 9
    s = at(evaluate_labels(gt, pred), 0.95)
    assert (s.tp, s.fp, s.fn) == (3, 1, 0)
    assert s.ap == pytest.approx(3 / 4) and s.precision == pytest.approx(3 / 4) and s.recall == 1.0


def test_shifted_object_counts_at_half_but_not_three_quarters():
    gt = np.zeros((30, 30), np.uint16)
    gt[10:20, 10:20] = 1
    pred = np.zeros_like(gt)
    pred[10:20, 12:22] = 1  # 2 px right: overlap 10*8 = 80, union 100 + 100 - 80 = 120, IoU = 2/3
    iou, ov, _, _ = iou_matrix(gt, pred)
    assert iou[0, 0] == pytest.approx(2 / 3) and ov[0, 0] == 80
    r = evaluate_labels(gt, pred)
    for t in (0.5, 0.55, 0.6, 0.65):
        s = at(r, t)
        assert (s.tp, s.fp, s.fn) == (1, 0, 0)
        assert s.pq == pytest.approx(2 / 3) and s.mean_matched_iou == pytest.approx(2 / 3)
    for t in (0.7, 0.75, 0.95):
        s = at(r, t)
        assert (s.tp, s.fp, s.fn) == (0, 1, 1) and s.ap == 0.0 and s.pq == 0.0


def test_split_one_gt_covered_by_two_predictions():
    gt = np.zeros((20, 20), np.int64)
    gt[5:15, 5:15] = 1
    pred = np.zeros_like(gt)
    pred[5:15, 5:11] = 1  # 60 px: IoU 0.6, matches at 0.5
    pred[5:15, 11:15] = 2  # 40 px: IoU 0.4, an unmatched extra piece
    r = evaluate_labels(gt, pred)
    assert (r["splits"], r["merges"]) == (1, 0)
    s = at(r, 0.5)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert (at(r, 0.65).tp, at(r, 0.65).fn) == (0, 1)


def test_merge_one_prediction_over_two_gts():
    gt = np.zeros((20, 20), np.int64)
    gt[5:15, 5:10] = 1
    gt[5:15, 10:15] = 2
    pred = np.zeros_like(gt)
    pred[5:15, 5:15] = 4  # IoU exactly 0.5 with each half: one of them matches at 0.5 (first of the tie)
    r = evaluate_labels(gt, pred)
    assert (r["splits"], r["merges"]) == (0, 1)
    s = at(r, 0.5)
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)
    assert at(r, 0.55).tp == 0


def test_split_merge_use_whole_object_areas():
    """Regression: the overlap matrix has no background row/column, so its sums are the *covered* parts of
    objects. Two predictions lying mostly on background and grazing one object were counted as a split, and
    a large prediction grazing two objects as a merge."""
    gt = np.zeros((40, 40), np.int64)
    gt[10:20, 10:20] = 1
    gt[25:35, 10:20] = 2
    pred = np.zeros_like(gt)
    pred[0:11, 10:14] = 1  # 44 px, 4 of them in gt 1
    pred[0:11, 16:20] = 2
    pred[19:26, 0:40] = 3  # 280 px touching a row of each gt
    r = evaluate_labels(gt, pred)
    assert (r["splits"], r["merges"]) == (0, 0)
    iou, ov, _, _ = iou_matrix(gt, pred)
    gt_area, pred_area = [100, 100], [44, 44, 280]
    assert split_merge_counts(ov, gt_area, pred_area) == (0, 0)
    assert stats_from_iou(iou, ov, gt_area=gt_area, pred_area=pred_area)["splits"] == 0


def test_empty_vs_empty_scores_one():
    z = np.zeros((8, 8), np.uint8)
    r = evaluate_labels(z, z)
    assert (r["n_gt"], r["n_pred"], r["splits"], r["merges"]) == (0, 0, 0, 0)
    for s in r["per_threshold"]:
        assert (s.tp, s.fp, s.fn) == (0, 0, 0) and s.ap == 1.0 and s.pq == 1.0 and s.f1 == 1.0


def test_empty_prediction_vs_objects():
    gt = three_squares()
    s = at(evaluate_labels(gt, np.zeros_like(gt)), 0.5)
    assert (s.tp, s.fp, s.fn) == (0, 0, 3)
    assert s.ap == 0.0 and s.recall == 0.0 and s.f1 == 0.0 and s.pq == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(InputError, match=r"differ in shape.*\(4, 4\).*\(4, 5\)"):
        evaluate_labels(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError):  # InputError is a ValueError: older callers keep working
        iou_matrix(np.zeros((4, 4), int), np.zeros((5, 4), int))


def test_background_is_zero_even_with_negative_and_huge_ids():
    gt = three_squares().astype(np.int64)
    pred = np.select([gt == 1, gt == 2, gt == 3], [-5, 2**40, 3], 0)
    iou, _, g_ids, p_ids = iou_matrix(gt, pred)
    assert g_ids.tolist() == [1, 2, 3] and p_ids.tolist() == [-5, 3, 2**40]
    assert iou.shape == (3, 3) and sorted(iou.max(1).tolist()) == [1.0, 1.0, 1.0]


def test_threshold_zero_never_matches_disjoint_objects():
    gi, pi = match(np.zeros((2, 2)), 0.0)
    assert gi.size == 0 and pi.size == 0


def test_subset_counts_use_gt_side_for_tp():
    gt = three_squares()
    m = match_labels(gt, gt)
    r = m.stats(gt_mask=np.array([True, False, False]), pred_mask=np.array([False, True, False]))
    s = r["per_threshold"][0]
    assert (r["n_gt"], r["n_pred"], s.tp, s.fp, s.fn) == (1, 1, 1, 0, 0)


label_images = arrays(np.int64, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 6))


@settings(max_examples=60, deadline=None, database=None)
@given(lab=label_images, seed=st.integers(0, 2**32 - 1))
def test_relabelled_copy_scores_one(lab, seed):
    """Ids are names, not meaning: any permutation of them (0 kept as background) is a perfect match."""
    ids = np.unique(lab[lab > 0])
    new = np.random.default_rng(seed).permutation(np.arange(1, 1000))[: ids.size] * 1000003
    lut = dict(zip(ids.tolist(), new.tolist()))
    perm = np.vectorize(lambda v: lut.get(v, 0), otypes=[np.int64])(lab)
    r = evaluate_labels(lab, perm)
    assert r["n_gt"] == r["n_pred"] == ids.size
    assert all(s.ap == 1.0 and s.pq == pytest.approx(1.0) for s in r["per_threshold"])
    assert (r["splits"], r["merges"]) == (0, 0)


@settings(max_examples=40, deadline=None, database=None)
@given(gt=label_images, data=st.data())
def test_sparse_path_agrees_with_dense(gt, data):
    """The whole-scene (sparse) matcher gives the counts of the dense matrix path training uses."""
    pred = data.draw(arrays(np.int64, gt.shape, elements=st.integers(0, 6)))
    iou, ov, _, _ = iou_matrix(gt, pred)
    dense = stats_from_iou(iou, ov, THRESHOLDS + (0.3,))
    sparse = evaluate_labels(gt, pred, THRESHOLDS + (0.3,))
    for a, b in zip(dense["per_threshold"], sparse["per_threshold"]):
        assert (a.tp, a.fp, a.fn) == (b.tp, b.fp, b.fn) and a.sum_iou == pytest.approx(b.sum_iou)
