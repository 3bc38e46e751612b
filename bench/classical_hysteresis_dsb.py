"""Classical model on the held-out DSB2018 validation images, with and without the hysteresis low threshold.

As bench/compare_models_dsb.py: every image is a scene (its own Otsu threshold); AP@0.5 = TP / (TP + FP + FN).
Inverted (non-fluorescence) images run without hysteresis. Run: python bench/classical_hysteresis_dsb.py [DSB_DIR]
"""
import json
import sys

from pipeline.evaluation.metrics import counts_at
from pipeline.models.instances import classical_instances
from pipeline.models.learned import SHIPPED_MODEL
from pipeline.stages.ingest import scene_statistics
from pipeline.training.tune import validation_samples

samples = validation_samples(SHIPPED_MODEL, sys.argv[1] if len(sys.argv) > 1 else "../shared/data/dsb2018")
res = {}
for name, ratio in (("otsu_only", None), ("hysteresis_0.5", 0.5)):
    c = {}
    for s in samples:
        gray = s.image.mean(0)
        st = scene_statistics([gray[None].reshape(1, -1)], low=0, high=100, low_ratio=ratio)
        thr, lo = st["threshold"], st["threshold_low"]
        if s.modality != "fluor":
            gray, thr, lo = 1 - gray, 1 - thr, (None if lo is None else 1 - lo)
            lo = None  # inverted images: the low threshold would sit on the other side; hysteresis only for fluorescence here
        pred = classical_instances(gray, thr, low_threshold=lo)
        for key in ("all", s.modality):
            cc = c.setdefault(key, [0, 0, 0])
            for j, v in enumerate(counts_at(s.labels, pred)):
                cc[j] += v
    res[name] = {k: round(v[0] / max(1, sum(v)), 4) for k, v in sorted(c.items())}
print(json.dumps(res))
