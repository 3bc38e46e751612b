"""Tune the post-processing of a trained checkpoint on its validation images.

The network's heads are computed once per image; only the (cheap) marker watershed is repeated for each
setting, and each image's counts are kept per setting, so the same scores serve every selection below.

Two steps, each a small grid over the best setting so far (the checkpoint's own setting is always a
candidate, so tuning never makes the validation score worse): the thresholds (:data:`GRID`), then the
smallest object and core kept (:data:`SIZE_GRID`). Settings chosen on the validation split make its
figures slightly optimistic, so the same procedure is also cross-validated — chosen on one half of the
images, scored on the other, and the other way round — which estimates the AP@0.5 to expect on unseen
images of the same kind.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Sequence

from pipeline.errors import ParameterError
from pipeline.evaluation.boxes import box_counts, boxes_of_labels
from pipeline.evaluation.metrics import counts_at
from pipeline.models.checkpoint import checkpoint_paths, load_metadata
from pipeline.models.instances import heads_to_instances
from pipeline.models.learned import LearnedModel
from pipeline.training.config import DataConfig
from pipeline.training.domain import checkpoint_samples, domain_record, store_record
from pipeline.training.grids import GRID, SIZE_GRID, VALIDATION_GRID

__all__ = ["tune_postprocess", "validation_samples", "score_postprocess", "best_postprocess", "Scorer", "GRID", "SIZE_GRID",
           "VALIDATION_GRID"]


class Scorer:
    """AP@0.5 = TP / (TP + FP + FN), counts summed over images, of post-processing settings on fixed heads;
    each image's counts are computed once per setting."""

    def __init__(self, heads_list, samples):
        self.heads, self.samples = list(heads_list), list(samples)
        self._counts: dict[tuple, list[tuple[int, int, int]]] = {}

    def counts(self, post: dict[str, Any]) -> list[tuple[int, int, int]]:
        key = tuple(sorted(post.items()))
        if key not in self._counts:
            per_image = []
            for h, s in zip(self.heads, self.samples):
                pred = heads_to_instances(h[0], h[1], h[2], **post)
                if s.boxes is not None:  # box labels: box-level counts at box IoU 0.4 (NEON benchmark)
                    per_image.append(box_counts(s.boxes, boxes_of_labels(pred), s.box_counted))
                else:
                    per_image.append(counts_at(s.labels, pred))
            self._counts[key] = per_image
        return self._counts[key]

    def score(self, post: dict[str, Any], images: Sequence[int] | None = None) -> dict[str, Any]:
        """Overall and per-modality scores of ``post`` on ``images`` (indices; default all)."""
        per_image = self.counts(post)
        idx = range(len(self.samples)) if images is None else images
        totals: dict[str, list[int]] = {"all": [0, 0, 0, 0]}
        for i in idx:
            for key in ("all", self.samples[i].modality):
                c = totals.setdefault(key, [0, 0, 0, 0])
                for j, v in enumerate(per_image[i]):
                    c[j] += v
                c[3] += 1
        # F1 = 2TP / (2TP + FP + FN) = 2 AP / (1 + AP): the same ranking, reported beside AP.
        return {k: {"ap50": v[0] / max(1, v[0] + v[1] + v[2]), "f1": 2 * v[0] / max(1, 2 * v[0] + v[1] + v[2]),
                    "tp": v[0], "fp": v[1], "fn": v[2], "images": v[3]}
                for k, v in sorted(totals.items())}

    def best(self, base: dict[str, Any], grids: Sequence[dict[str, list]], images: Sequence[int] | None = None
             ) -> dict[str, Any]:
        """The best setting by overall AP@0.5 on ``images``: each grid in turn, over the best so far."""
        post = dict(base)
        for grid in grids:
            best_ap, best_post = self.score(post, images)["all"]["ap50"], post
            for values in itertools.product(*grid.values()):
                cand = {**post, **dict(zip(grid.keys(), values))}
                ap = self.score(cand, images)["all"]["ap50"]
                if ap > best_ap:
                    best_ap, best_post = ap, cand
            post = best_post
        return post

    def cross_validated(self, base: dict[str, Any], grids: Sequence[dict[str, list]]) -> dict[str, Any]:
        """Two-fold estimate of the tuned scores: settings chosen on one half (split by modality), counted
        on the other half, and the other way round."""
        halves: list[list[int]] = [[], []]
        seen: dict[str, int] = {}
        for i, s in enumerate(self.samples):
            n = seen.get(s.modality, 0)
            halves[n % 2].append(i)
            seen[s.modality] = n + 1
        totals: dict[str, dict[str, int]] = {}
        for fit, held in ((0, 1), (1, 0)):
            res = self.score(self.best(base, grids, halves[fit]), halves[held])
            for key, r in res.items():
                t = totals.setdefault(key, {"tp": 0, "fp": 0, "fn": 0, "images": 0})
                for k in t:
                    t[k] += r[k]
        return {k: {"ap50": t["tp"] / max(1, t["tp"] + t["fp"] + t["fn"]), **t} for k, t in sorted(totals.items())}


def score_postprocess(heads_list, samples, post: dict[str, Any]) -> dict[str, Any]:
    """AP at IoU 0.5 = TP / (TP + FP + FN), counts summed over the images, overall and per modality."""
    return Scorer(heads_list, samples).score(post)


def best_postprocess(heads_list, samples, base: dict[str, Any], grid: dict[str, list]) -> tuple[dict, dict]:
    """The setting of ``grid`` (over ``base``, which is a candidate too) with the best overall AP@0.5, and its
    scores."""
    scorer = Scorer(heads_list, samples)
    post = scorer.best(base, [grid])
    return post, scorer.score(post)


def validation_samples(checkpoint: str, data: DataConfig | str) -> list:
    """The images ``checkpoint`` was validated on (its JSON names them), loaded from ``data``: the training
    config's ``data:`` section, or a folder with images/ and labels/. None of them there is one clear error."""
    return _samples(checkpoint, data)[1]


def _samples(checkpoint: str, data: DataConfig | str) -> tuple[list, list]:
    """All the images ``checkpoint`` was trained on and the validation ones (:func:`checkpoint_samples`), loaded
    once; no validation image among them is one clear error."""
    samples, val = checkpoint_samples(checkpoint, data)
    if not val:
        names = load_metadata(checkpoint)["training"].get("val_names", [])
        where = data if isinstance(data, str) else data.root if data.kind in ("folders", "consep") else ", ".join(data.rasters)
        raise ParameterError(
            f"seamline tune: none of the checkpoint's {len(names)} validation images are in {where}; "
            "pass the data it was trained on (--data DIR or --config TRAINING.yaml)")
    return samples, val


def tune_postprocess(checkpoint: str, data: DataConfig | str, write: bool = True) -> dict[str, Any]:
    """Tune ``checkpoint`` on its validation images, found in ``data``: the training config's ``data:``
    section, or a folder with images/ and labels/."""
    md = load_metadata(checkpoint)
    everything, samples = _samples(checkpoint, data)
    model = LearnedModel(checkpoint, device="auto")
    scorer = Scorer([model.predict_heads(s.image[None])[0] for s in samples], samples)
    base = dict(md["postprocess"])
    grids = [GRID, SIZE_GRID]
    best = scorer.best(base, grids)
    out = {"before": scorer.score(base), "after": scorer.score(best), "postprocess": best,
           "cross_validated": scorer.cross_validated(base, grids)}
    if write:
        md["postprocess"] = best
        md["validation"] = out["after"]
        md["validation_cross_validated"] = out["cross_validated"]
        md["postprocess_tuned_on"] = ("validation split (figures slightly optimistic; validation_cross_validated: "
                                      "chosen on one half, scored on the other)")
        _, meta = checkpoint_paths(checkpoint)
        meta.write_text(json.dumps(md, indent=2, sort_keys=True) + "\n")
        # the training-domain record holds the model's objects and scores under its post-processing (the quality
        # verdict compares runs with it): made again with the new settings, or it describes another model
        store_record(checkpoint, domain_record(checkpoint, everything, samples))
    return out
