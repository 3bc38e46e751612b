"""Memory and speed of the learned model's CPU forward pass (ONNX Runtime on numpy, as the workers run it) by
batch size and with ORT's memory arena on or off: each configuration in a fresh process, alternated over
rounds so that a busy machine slows them alike. Peak RSS is what one worker holds for the model.

    python bench/ort_memory.py --size 1536 --rounds 3 --json docs/bench/ort_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np, psutil
from pipeline.models.backends import cached_onnx, onnx_session
from pipeline.models.checkpoint import checkpoint_paths
batch, size, arena, threads = {batch}, {size}, {arena}, {threads}
run = onnx_session(cached_onnx(checkpoint_paths({model!r})[0]), threads, arena=arena)
p = psutil.Process()
base = p.memory_info().rss
x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
run(x)  # warm-up
t = time.perf_counter()
for _ in range({reps}):
    run(x)
dt = (time.perf_counter() - t) / {reps}
print(json.dumps({{"rss_base_mb": base >> 20, "rss_after_mb": p.memory_info().rss >> 20,
                   "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
                   "us_per_px": dt / (batch * size * size) * 1e6}}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "pipeline" / "weights" / "nuclei_unet_mbv2"))
    ap.add_argument("--size", type=int, default=1536, help="window side (tile + 2 x halo)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    from pipeline.bench import machine_info
    from pipeline.models.learned import LearnedModel

    LearnedModel(a.model, device="cpu", inference="onnx")  # exports the ONNX file once if needed
    configs = [(1, True), (1, False), (4, False), (4, True)]  # the largest last: it can meet the OOM killer
    rows: dict[str, list] = {f"batch{b}_arena{int(ar)}": [] for b, ar in configs}
    for r in range(a.rounds):
        for b, ar in configs:
            code = CHILD.format(root=str(ROOT), batch=b, size=a.size, arena=ar, threads=a.threads, model=a.model, reps=a.reps)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            rows[f"batch{b}_arena{int(ar)}"].append(json.loads(out.strip().splitlines()[-1]))
            print(r, b, ar, rows[f"batch{b}_arena{int(ar)}"][-1], file=sys.stderr)
    summary = {k: {"maxrss_mb": max(x["maxrss_mb"] for x in v), "us_per_px_median": sorted(x["us_per_px"] for x in v)[len(v) // 2]}
               for k, v in rows.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    res = {"size": a.size, "threads": a.threads, "summary": summary, "runs": rows, "machine": machine_info(), "commit": commit,
           "load_avg": [round(x, 1) for x in os.getloadavg()], "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(summary, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
