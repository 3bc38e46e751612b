"""CPU forward-pass back-ends of the shipped model, side by side in one run: bare forward Mpx/s, end-to-end
Mpx/s of ``segment_scene`` and AP@0.5 on the held-out DSB2018 validation images (as bench/compare_models_dsb.py
and ``seamline tune`` compute it: TP / (TP + FP + FN), counts summed over images).

    python bench/cpu_inference.py [--data ../shared/data/dsb2018] [--backends eager,bf16,compile,onnx]
                                  [--size 1024] [--e2e-size 2048] [--json docs/bench/cpu_inference.json]

Bare forward: one (1, 3, size, size) window from a synthetic slide, all cores, the median of ``--reps`` rounds
taken in turn across back-ends (so a load change on a shared machine hits them all alike); the first call of
each (export / compilation) is timed apart. End to end: the synthetic slide through every stage on one
LocalCluster worker with all cores, 1024-px tiles.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.bench import machine_info
from pipeline.evaluation.metrics import counts_at
from pipeline.models.learned import SHIPPED_MODEL, LearnedModel


def slide(path: Path, size: int) -> None:
    from pipeline.synthetic import write_scene

    write_scene(path, size, size, crs=None, pixel_size_um=0.325, seed=2018, cell=26, radius=(5, 11), fill=0.85)


def window(path: Path, size: int) -> np.ndarray:
    import rasterio

    from pipeline.models.normalize import apply_normalization, percentiles

    with rasterio.open(path) as ds:
        a = ds.read(window=((0, size), (0, size)))
    norm = apply_normalization(a, percentiles(a[:, ::7, ::7], 1.0, 99.8))
    return np.repeat(norm, 3, axis=0)[None].astype(np.float32)


def ap50(model: LearnedModel, samples) -> dict[str, float]:
    c: dict[str, list[int]] = {}
    for s in samples:
        pred, _ = model.instances(model.predict_heads(s.image[None])[0])
        for key in ("all", s.modality):
            cc = c.setdefault(key, [0, 0, 0])
            for j, v in enumerate(counts_at(s.labels, pred)):
                cc[j] += v
    return {k: round(v[0] / max(1, sum(v)), 4) for k, v in sorted(c.items())}


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/dsb2018")
    ap.add_argument("--backends", default="eager,bf16,compile,onnx")
    ap.add_argument("--ap-backends", default=None, help="default: all of --backends")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--e2e-size", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--e2e-only", action="store_true", help="only the end-to-end runs")
    ap.add_argument("--e2e-rounds", type=int, default=1, help="end-to-end runs per back-end, taken in turn")
    ap.add_argument("--json")
    a = ap.parse_args()
    backends = a.backends.split(",")
    threads = os.cpu_count() or 1
    res: dict = {"machine": machine_info(), "threads": threads, "window": a.size, "backends": backends,
                 "first_call_s": {}, "bare_mpx_s": {}, "bare_rounds_s": {b: [] for b in backends},
                 "max_abs_diff_vs_eager": {}, "ap50": {}, "end_to_end_mpx_s": {}, "end_to_end_timings_s": {}}
    tmp = Path(tempfile.mkdtemp(prefix="seamline-cpu-inf-"))
    os.environ.setdefault("SEAMLINE_CACHE", str(tmp / "cache"))
    sl = tmp / "slide.ome.tif"
    slide(sl, max(a.size, a.e2e_size))
    x = window(sl, a.size)
    models = {}
    if a.e2e_only:
        backends_bare: list[str] = []
    else:
        backends_bare = backends
    ref = None
    for b in backends_bare:
        t0 = time.perf_counter()
        m = LearnedModel(SHIPPED_MODEL, device="cpu", threads=threads, inference=b)
        y = m.predict_heads(x)
        res["first_call_s"][b] = round(time.perf_counter() - t0, 2)
        ref = y if ref is None else ref
        res["max_abs_diff_vs_eager"][b] = float(np.abs(y - ref).max())
        models[b] = m
    for _ in range(a.reps):
        for b, m in models.items():
            t0 = time.perf_counter()
            m.predict_heads(x)
            res["bare_rounds_s"][b].append(round(time.perf_counter() - t0, 3))
    for b in backends_bare:
        res["bare_mpx_s"][b] = round(a.size * a.size / 1e6 / float(np.median(res["bare_rounds_s"][b])), 3)
    print(json.dumps({k: res[k] for k in ("first_call_s", "bare_mpx_s", "max_abs_diff_vs_eager")}), flush=True)

    from pipeline.training.tune import validation_samples

    samples = validation_samples(SHIPPED_MODEL, a.data)
    for b in ([] if a.e2e_only else a.ap_backends.split(",") if a.ap_backends else backends):
        t0 = time.perf_counter()
        res["ap50"][b] = ap50(models[b], samples)
        res["ap50"][b]["seconds"] = round(time.perf_counter() - t0, 1)
        print(b, json.dumps(res["ap50"][b]), flush=True)
    models.clear()

    from pipeline.config import SegmentConfig
    from pipeline.runner import segment_scene
    from pipeline.stages.dispatch import dask_client

    e2e = tmp / "e2e.ome.tif"
    slide(e2e, a.e2e_size)
    warm = tmp / "warm.ome.tif"
    slide(warm, 512)
    with dask_client(1, 1) as client:
        for b in backends:  # warm-up: worker imports, and each back-end's one-off export / compilation
            segment_scene(str(warm), tmp / f"out_warm_{b}", SegmentConfig(model="default", tile=512, workers=1, inference=b),
                          client=client)
        for r in range(a.e2e_rounds):
            for b in backends:
                cfg = SegmentConfig(model="default", tile=1024, workers=1, inference=b, qupath_geojson=False, label_image=False)
                s = segment_scene(str(e2e), tmp / f"out_{b}_{r}", cfg, client=client)
                res["end_to_end_mpx_s"].setdefault(b, []).append(s["megapixels_per_s"])
                res["end_to_end_timings_s"].setdefault(b, []).append({**s["timings_s"], "objects": s["objects"]})
                print(b, s["megapixels_per_s"], s["objects"], flush=True)
    print(json.dumps(res, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
