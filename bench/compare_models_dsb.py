"""Shipped nuclei model vs ``--model classical`` on the held-out DSB2018 validation images, per modality.

Both see each image as a scene: percentile normalisation from the image, and for the classical model the
Otsu threshold of the image (scene statistics). AP at IoU 0.5 = TP / (TP + FP + FN), counts summed over images.
Run: python bench/compare_models_dsb.py [../shared/data/dsb2018]
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from pipeline.ingest import scene_statistics
from pipeline.instances import classical_instances
from pipeline.metrics import iou_matrix, match
from pipeline.models.checkpoint import load_metadata
from pipeline.models.learned import SHIPPED_MODEL, LearnedModel
from pipeline.training.data import load_folder_dataset


def main(root: str = "../shared/data/dsb2018") -> dict:
    md = load_metadata(SHIPPED_MODEL)
    val = set(md["training"]["val_names"])
    samples = [s for s in load_folder_dataset(root) if s.name in val]
    model = LearnedModel(SHIPPED_MODEL, device="auto")
    counts: dict[str, dict[str, list[int]]] = {"learned": {}, "classical": {}}
    px = 0
    t_model = 0.0
    for s in samples:
        t0 = time.perf_counter()
        learned, _ = model.instances(model.predict_heads(s.image[None])[0])
        t_model += time.perf_counter() - t0
        px += s.labels.size
        gray = s.image.mean(0)
        thr = scene_statistics([gray[None].reshape(1, -1)], low=0, high=100)["threshold"]
        # Classical assumes bright objects: for brightfield/H&E (dark nuclei) invert, to be fair to it.
        if s.modality != "fluor":
            gray = 1 - gray
            thr = 1 - thr
        classical = classical_instances(gray, thr)
        for name, pred in (("learned", learned), ("classical", classical)):
            iou, _, _, _ = iou_matrix(s.labels, pred)
            gi, _ = match(iou, 0.5)
            for key in ("all", s.modality):
                c = counts[name].setdefault(key, [0, 0, 0])
                c[0] += gi.size
                c[1] += iou.shape[1] - gi.size
                c[2] += iou.shape[0] - gi.size
    res = {name: {k: round(v[0] / max(1, sum(v)), 3) for k, v in sorted(c.items())} for name, c in counts.items()}
    res["images"] = {m: sum(1 for s in samples if s.modality == m) for m in sorted({s.modality for s in samples})}
    res["learned_model_plus_postprocess_mpx_s"] = round(px / 1e6 / t_model, 3)
    res["device"] = model.device
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main(*sys.argv[1:])
