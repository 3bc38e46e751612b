"""Forward pass of the shipped model in the default (NCHW) and channels-last (NHWC) layouts, side by side.

Same process, same threads, same input; the median of ``--repeat`` timed runs after one warm-up each.
Run: python bench/layout_cpu.py [--size 1024] [--threads 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main() -> dict:
    import torch

    from pipeline.bench import machine_info
    from pipeline.models.learned import SHIPPED_MODEL, LearnedModel

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = LearnedModel(SHIPPED_MODEL, device="cpu", threads=a.threads)
    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, a.size, a.size), dtype=np.float32))
    res = {"machine": machine_info(), "size": a.size, "threads": a.threads}
    for name, fmt in (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last)):
        net = model.net.to(memory_format=fmt)
        xi = x.contiguous(memory_format=fmt)
        times = []
        with torch.inference_mode():
            net(xi)
            for _ in range(a.repeat):
                t = time.perf_counter()
                net(xi)
                times.append(time.perf_counter() - t)
        res[f"{name}_s"] = round(statistics.median(times), 3)
        res[f"{name}_mpx_s"] = round(a.size * a.size / 1e6 / statistics.median(times), 3)
    res["nhwc_speedup"] = round(res["nchw_s"] / res["nhwc_s"], 2)
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
