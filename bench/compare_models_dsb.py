"""Shipped nuclei model (with and without test-time augmentation) vs ``--model classical`` on the held-out
DSB2018 validation images, per modality, side by side in one run.

Every image is treated as a scene: percentile normalisation from the image, and for the classical model the
Otsu threshold of the image (scene statistics). AP at IoU 0.5 = TP / (TP + FP + FN), counts summed over
images; F1 and the split/merge counts come from :mod:`pipeline.evaluation.metrics`.
Run: python bench/compare_models_dsb.py [--data ../shared/data/dsb2018] [--model default] [--no-tta]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from pipeline.bench import machine_info
from pipeline.evaluation.metrics import counts_at
from pipeline.models.instances import classical_instances
from pipeline.models.learned import LearnedModel
from pipeline.models.registry import resolve_model_spec
from pipeline.stages.ingest import scene_statistics
from pipeline.training.tune import validation_samples


def _classical(s) -> np.ndarray:
    gray = s.image.mean(0)
    thr = scene_statistics([gray[None].reshape(1, -1)], low=0, high=100)["threshold"]
    # Classical assumes bright objects: for brightfield/H&E (dark nuclei) invert, to be fair to it.
    if s.modality != "fluor":
        gray, thr = 1 - gray, 1 - thr
    return classical_instances(gray, thr)


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/dsb2018")
    ap.add_argument("--model", default="default")
    ap.add_argument("--no-tta", action="store_true")
    a = ap.parse_args()
    path = resolve_model_spec(a.model)
    samples = validation_samples(path, a.data)
    models = {"learned": LearnedModel(path, device="auto")}
    if not a.no_tta:
        models["learned_tta"] = LearnedModel(path, device="auto", tta=True)
    counts: dict[str, dict[str, list[int]]] = {k: {} for k in [*models, "classical"]}
    seconds = {k: 0.0 for k in counts}
    px = 0
    for s in samples:
        px += s.labels.size
        preds = {}
        for name, m in models.items():
            t0 = time.perf_counter()
            preds[name], _ = m.instances(m.predict_heads(s.image[None])[0])
            seconds[name] += time.perf_counter() - t0
        t0 = time.perf_counter()
        preds["classical"] = _classical(s)
        seconds["classical"] += time.perf_counter() - t0
        for name, pred in preds.items():
            tp_fp_fn = counts_at(s.labels, pred)
            for key in ("all", s.modality):
                c = counts[name].setdefault(key, [0, 0, 0])
                for j, v in enumerate(tp_fp_fn):
                    c[j] += v
    res: dict = {"machine": machine_info(), "model": path, "device": models["learned"].device,
                 "images": {m: sum(1 for s in samples if s.modality == m) for m in sorted({s.modality for s in samples})},
                 "ap50": {}, "counts_tp_fp_fn": {}, "mpx_s_incl_postprocess": {}}
    for name, c in counts.items():
        res["ap50"][name] = {k: round(v[0] / max(1, sum(v)), 3) for k, v in sorted(c.items())}
        res["counts_tp_fp_fn"][name] = {k: v for k, v in sorted(c.items())}
        res["mpx_s_incl_postprocess"][name] = round(px / 1e6 / seconds[name], 3)
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
