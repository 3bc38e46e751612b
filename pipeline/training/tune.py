"""Tune the post-processing thresholds of a trained checkpoint on its validation images.

The network's heads are computed once per image; only the (cheap) marker watershed is repeated for each
setting. Thresholds chosen on the validation split make its figures slightly optimistic: the checkpoint
metadata says so (``postprocess_tuned_on``).
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any


from ..instances import heads_to_instances
from ..metrics import iou_matrix, match
from ..models.checkpoint import checkpoint_paths, load_metadata
from ..models.learned import LearnedModel
from .data import load_folder_dataset

__all__ = ["tune_postprocess", "GRID"]

GRID = {
    "fg_threshold": [0.4, 0.5, 0.6],
    "marker_threshold": [0.3, 0.4, 0.5, 0.6],
    "boundary_threshold": [0.3, 0.5, 0.7],
}


def _score(heads_list, samples, post) -> dict[str, Any]:
    counts: dict[str, list[int]] = {}
    for h, s in zip(heads_list, samples):
        pred = heads_to_instances(h[0], h[1], h[2], **post)
        iou, _, _, _ = iou_matrix(s.labels, pred)
        gi, _ = match(iou, 0.5)
        for key in ("all", s.modality):
            c = counts.setdefault(key, [0, 0, 0])
            c[0] += gi.size
            c[1] += iou.shape[1] - gi.size
            c[2] += iou.shape[0] - gi.size
    return {k: {"ap50": v[0] / max(1, sum(v)), "tp": v[0], "fp": v[1], "fn": v[2]} for k, v in sorted(counts.items())}


def tune_postprocess(checkpoint: str, data_root: str, write: bool = True) -> dict[str, Any]:
    md = load_metadata(checkpoint)
    names = set(md["training"].get("val_names", []))
    samples = [s for s in load_folder_dataset(data_root, int(md["in_channels"])) if s.name in names]
    model = LearnedModel(checkpoint, device="auto")
    heads_list = [model.predict_heads(s.image[None])[0] for s in samples]
    base = dict(md["postprocess"])
    results = []
    for values in itertools.product(*GRID.values()):
        post = {**base, **dict(zip(GRID.keys(), values))}
        res = _score(heads_list, samples, post)
        results.append((res["all"]["ap50"], post, res))
        print(f"{values} AP50 all={res['all']['ap50']:.3f} fluor={res.get('fluor', {}).get('ap50', float('nan')):.3f}", file=sys.stderr)
    best_ap, best_post, best_res = max(results, key=lambda r: r[0])
    out = {"before": _score(heads_list, samples, base), "after": best_res, "postprocess": best_post}
    if write:
        md["postprocess"] = best_post
        md["validation"] = best_res
        md["postprocess_tuned_on"] = "validation split (figures slightly optimistic)"
        _, meta = checkpoint_paths(checkpoint)
        meta.write_text(json.dumps(md, indent=2, sort_keys=True) + "\n")
    return out
