"""Classical model on a scene where object brightness varies: dim isolated objects found, touching bright
pairs kept apart — with and without the hysteresis low threshold (``classical.low_ratio``).

    python bench/dim_objects.py [--size 4096] [--json docs/bench/dim_objects.json]

Thresholds are scene statistics, as in ``seamline segment`` (Otsu on the scene sample, computed once); the
image is labelled whole (tiled = untiled is tests/test_stitching.py's job).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from pipeline.models.instances import classical_instances
from pipeline.stages.ingest import scene_statistics
from pipeline.synthetic import varied_brightness_scene


def score(pred: np.ndarray, truth: np.ndarray, dim: list[int], pairs: list[tuple[int, int]]) -> dict:
    """Found = a predicted object with IoU >= 0.5; a pair is merged when one predicted object covers half of
    each of its two objects."""
    t, p = truth.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    both = (t > 0) & (p > 0)
    pair, inter = np.unique(t[both] * (1 << 32) + p[both], return_counts=True)
    ti, pi = pair >> 32, pair & 0xFFFFFFFF
    ta = np.bincount(t, minlength=t.max() + 1)
    pa = np.bincount(p, minlength=p.max() + 1)
    iou = inter / (ta[ti] + pa[pi] - inter)
    found = np.zeros(ta.size, bool)
    found[ti[iou >= 0.5]] = True
    cover = {(a, b): c / ta[a] for a, b, c in zip(ti.tolist(), pi.tolist(), inter.tolist())}
    owner = {}
    for (a, b), c in cover.items():
        if c >= 0.5:
            owner[a] = b
    n_obj = ta.size - 1
    dim_set = set(dim)
    bright = [i for i in range(1, ta.size) if i not in dim_set and ta[i] > 0]
    merged = sum(1 for a, b in pairs if a in owner and owner.get(a) == owner.get(b))
    return {"objects": n_obj, "dim": len(dim), "dim_found": int(found[dim].sum()), "bright": len(bright),
            "bright_found": int(found[bright].sum()), "pairs": len(pairs), "pairs_merged": int(merged),
            "predicted": int(len(np.unique(p)) - 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--json")
    a = ap.parse_args()
    img, lab, dim, pairs = varied_brightness_scene(a.size, seed=1)
    sample = (np.clip(img, 0, None) * 4000).astype(np.uint16)[None]  # as a uint16 raster would hold it
    stride = 7
    res = {"size": a.size, "machine": f"{platform.machine()} {platform.processor()}".strip(), "runs": {}}
    for name, ratio in (("otsu_only", None), ("hysteresis_0.5", 0.5)):
        st = scene_statistics([sample[:, ::stride, ::stride].reshape(1, -1)], low_ratio=ratio)
        from pipeline.models.normalize import apply_normalization

        norm = apply_normalization(sample, st["percentiles"])[0]
        t0 = time.perf_counter()
        pred = classical_instances(norm, st["threshold"], low_threshold=st["threshold_low"])
        dt = time.perf_counter() - t0
        res["runs"][name] = {"threshold": st["threshold"], "threshold_low": st["threshold_low"], "seconds": round(dt, 2),
                             **score(pred, lab, dim, pairs)}
        print(name, json.dumps(res["runs"][name]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
