"""Tune the post-processing thresholds of a trained checkpoint on its validation images.

The network's heads are computed once per image; only the (cheap) marker watershed is repeated for each
setting. Thresholds chosen on the validation split make its figures slightly optimistic: the checkpoint
metadata says so (``postprocess_tuned_on``).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from ..instances import heads_to_instances
from ..metrics import iou_matrix, match
from ..models.checkpoint import checkpoint_paths, load_metadata
from ..models.learned import LearnedModel
from .data import load_folder_dataset
from .grids import GRID, VALIDATION_GRID

__all__ = ["tune_postprocess", "score_postprocess", "best_postprocess", "GRID", "VALIDATION_GRID"]


def score_postprocess(heads_list, samples, post: dict[str, Any]) -> dict[str, Any]:
    """AP at IoU 0.5 = TP / (TP + FP + FN), counts summed over the images, overall and per modality."""
    counts: dict[str, list[int]] = {}
    for h, s in zip(heads_list, samples):
        pred = heads_to_instances(h[0], h[1], h[2], **post)
        iou, _, _, _ = iou_matrix(s.labels, pred)
        gi, _ = match(iou, 0.5)
        for key in ("all", s.modality):
            c = counts.setdefault(key, [0, 0, 0, 0])
            c[0] += gi.size
            c[1] += iou.shape[1] - gi.size
            c[2] += iou.shape[0] - gi.size
            c[3] += 1
    return {k: {"ap50": v[0] / max(1, v[0] + v[1] + v[2]), "tp": v[0], "fp": v[1], "fn": v[2], "images": v[3]}
            for k, v in sorted(counts.items())}


def best_postprocess(heads_list, samples, base: dict[str, Any], grid: dict[str, list]) -> tuple[dict, dict]:
    """The setting of ``grid`` (over ``base``) with the best overall AP@0.5, and its scores."""
    best: tuple[float, dict, dict] | None = None
    for values in itertools.product(*grid.values()):
        post = {**base, **dict(zip(grid.keys(), values))}
        res = score_postprocess(heads_list, samples, post)
        if best is None or res["all"]["ap50"] > best[0]:
            best = (res["all"]["ap50"], post, res)
    assert best is not None
    return best[1], best[2]


def tune_postprocess(checkpoint: str, data_root: str, write: bool = True) -> dict[str, Any]:
    md = load_metadata(checkpoint)
    names = set(md["training"].get("val_names", []))
    samples = [s for s in load_folder_dataset(data_root, int(md["in_channels"])) if s.name in names]
    model = LearnedModel(checkpoint, device="auto")
    heads_list = [model.predict_heads(s.image[None])[0] for s in samples]
    base = dict(md["postprocess"])
    best_post, best_res = best_postprocess(heads_list, samples, base, GRID)
    out = {"before": score_postprocess(heads_list, samples, base), "after": best_res, "postprocess": best_post}
    if write:
        md["postprocess"] = best_post
        md["validation"] = best_res
        md["postprocess_tuned_on"] = "validation split (figures slightly optimistic)"
        _, meta = checkpoint_paths(checkpoint)
        meta.write_text(json.dumps(md, indent=2, sort_keys=True) + "\n")
    return out
