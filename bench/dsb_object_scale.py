"""DSB2018 validation AP@0.5 with and without the object-scale rule, side by side in one run.

DSB2018 has no pixel size, so the rule's estimate route applies: each image's object diameter is estimated
from the image (pipeline.stages.objectscale), the image is area-averaged by object_diameter_px / estimate (the
same resampler as ingest), segmented, and the labels are mapped back to the image grid (nearest).
Run: python bench/dsb_object_scale.py [--data ../shared/data/dsb2018] [--model default]
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> dict:
    from pipeline.evaluation.metrics import counts_at
    from pipeline.io.readers.base import Level
    from pipeline.models.checkpoint import load_metadata
    from pipeline.models.learned import LearnedModel
    from pipeline.models.registry import resolve_model_spec
    from pipeline.stages.objectscale import choose_scale, estimate_diameter
    from pipeline.stages.resolution import area_resample, working_shape
    from pipeline.training.tune import validation_samples

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/dsb2018")
    ap.add_argument("--model", default="default")
    a = ap.parse_args()
    path = resolve_model_spec(a.model)
    md = load_metadata(path)
    samples = validation_samples(path, a.data)
    model = LearnedModel(path, device="auto")
    counts = {"native": {}, "rescaled": {}}
    factors = []
    for s in samples:
        img = s.image
        h, w = img.shape[1:]
        sc = choose_scale(md, None, "estimate", lambda: estimate_diameter([img.mean(0)]))
        factors.append(sc.factor)
        preds = {"native": model.instances(model.predict_heads(img[None])[0])[0]}
        if sc.factor == 1.0:
            preds["rescaled"] = preds["native"]
        else:
            lv = Level(h, w, 1.0)
            oh, ow = working_shape(lv, 1.0 / sc.factor)
            work = area_resample(img, 1.0 / sc.factor, 0, 0, oh, ow, lv, "float32")
            lab = model.instances(model.predict_heads(work[None])[0])[0]
            ri = np.minimum(((np.arange(h) + 0.5) * oh / h).astype(int), oh - 1)
            ci = np.minimum(((np.arange(w) + 0.5) * ow / w).astype(int), ow - 1)
            preds["rescaled"] = lab[np.ix_(ri, ci)]
        for k, p in preds.items():
            tp, fp, fn = counts_at(s.labels, p, 0.5)
            for key in ("all", s.modality):
                c = counts[k].setdefault(key, [0, 0, 0])
                c[0] += tp
                c[1] += fp
                c[2] += fn
    res = {k: {m: {"ap50": round(c[0] / max(1, sum(c)), 4), "tp": c[0], "fp": c[1], "fn": c[2]} for m, c in sorted(v.items())}
           for k, v in counts.items()}
    f = np.array(factors)
    res["factors"] = {"rescaled_images": int((f != 1).sum()), "images": len(f),
                      "p10_median_p90": [round(float(x), 3) for x in np.percentile(f, [10, 50, 90])]}
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
