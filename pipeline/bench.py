"""``seamline bench``: throughput per stage and end to end, against the bare model forward pass.

Everything is measured in one run on one machine, so the ratios are side by side:

* end-to-end Mpx/s of ``segment`` (ingest → stats → tiles → stitch → write), and per stage;
* the bare forward pass of the same model on the same scene's pixels, same device, same total threads
  (tiles of the configured size, batched) — the ceiling that the pipeline should follow;
* the peak resident memory of the whole process tree (driver, scheduler, workers).

Results are printed and written as JSON with the machine they came from.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from pipeline.config import SegmentConfig
from pipeline.models.learned import pick_device
from pipeline.models.normalize import apply_normalization
from pipeline.models.registry import load_model
from pipeline.runner import segment_scene
from pipeline.stages.ingest import scene_statistics
from pipeline.synthetic import write_periodic_scene

__all__ = ["machine_info", "bare_forward_mpx_s", "run_bench"]


def machine_info() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "gpu": None}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def code_commit() -> str | None:
    """The git commit of the code being measured (with ``+changes`` when the working tree differs), if any."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode:
        return None
    return rev.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _read_tiles(path: str, tile: int, max_tiles: int) -> list[np.ndarray]:
    import rasterio
    from rasterio.windows import Window as RWindow

    with rasterio.open(path) as ds:
        n_r, n_c = ds.height // tile, ds.width // tile
        idx = [(r, c) for r in range(max(1, n_r)) for c in range(max(1, n_c))][:max_tiles]
        return [ds.read(window=RWindow(c * tile, r * tile, min(tile, ds.width), min(tile, ds.height))) for r, c in idx]


def _forward_tiles(model, tiles: list[np.ndarray], stats: dict, batch_size: int | None, barrier=None) -> tuple[float, float, int]:
    """Normalise, warm up, (wait for the other processes,) then time the forward passes: (start, end, pixels)."""
    batch_size = batch_size or getattr(model, "default_batch", 1)
    batch = [model.prepare(apply_normalization(t, stats["percentiles"])) for t in tiles]
    model.predict_heads(np.stack(batch[:1]))  # warm-up: allocator, kernels, threads
    if barrier is not None:
        barrier.wait()
    t0 = time.time()
    px = 0
    for s in range(0, len(batch), batch_size):
        b = np.stack(batch[s : s + batch_size])
        model.predict_heads(b)  # returns host memory: on CUDA this waits for the device
        px += b.shape[0] * b.shape[2] * b.shape[3]
    return t0, time.time(), px


def _bare_process(model_spec, path, tile, max_tiles, share, procs, stats, batch_size, device, tta, barrier, queue):
    model = load_model(model_spec, device=device, threads=1, tta=tta)
    tiles = _read_tiles(path, tile, max_tiles)[share::procs]
    queue.put(_forward_tiles(model, tiles, stats, batch_size, barrier))


def bare_forward_mpx_s(model_spec: str, scene: str, tile: int, batch_size: int, device: str, threads: int,
                       max_tiles: int = 64, tta: bool = False, procs: int = 1) -> dict:
    """Forward pass only (no I/O, no post-processing) over up to ``max_tiles`` tiles of the scene.

    ``procs = 1``: one process with ``threads`` threads (torch's intra-op parallelism). ``procs > 1``: that many
    processes of one thread each, sharing the tiles and started together — on a CPU usually the faster use of
    the same cores, and so the stricter ceiling for the pipeline (whose workers are such processes).
    """
    tiles = _read_tiles(scene, tile, max_tiles)
    stats = scene_statistics([t.reshape(t.shape[0], -1)[:, ::97] for t in tiles])
    if procs == 1:
        model = load_model(model_spec, device=device, threads=threads, tta=tta)
        t0, t1, px = _forward_tiles(model, tiles, stats, batch_size)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        barrier, queue = ctx.Barrier(procs), ctx.Queue()
        ps = [ctx.Process(target=_bare_process, args=(model_spec, scene, tile, max_tiles, i, procs, stats, batch_size,
                                                        device, tta, barrier, queue)) for i in range(procs)]
        for p in ps:
            p.start()
        parts = [queue.get() for _ in ps]
        for p in ps:
            p.join()
        t0, t1, px = min(p[0] for p in parts), max(p[1] for p in parts), sum(p[2] for p in parts)
    dt = t1 - t0
    return {"tiles": len(tiles), "processes": procs, "threads_per_process": threads if procs == 1 else 1,
            "megapixels": px / 1e6, "seconds": round(dt, 2), "mpx_s": px / 1e6 / dt}


def run_bench(out: str | Path, size: int, model: str, tile: int, halo: int | None, workers: int, device: str = "auto",
              batch_size: int | None = None, keep: bool = False, tta: bool = False, cell: int = 24) -> dict:
    """``cell``: the objects' grid spacing in pixels — 24 is the dense default (~1,300 objects per Mpx), 96 a
    sparse scene (~90 per Mpx: most of every tile is background)."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{size}" if cell == 24 else f"{size}_cell{cell}"
    scene = out / f"bench_{tag}.tif"
    t0 = time.perf_counter()
    if not scene.exists():
        write_periodic_scene(scene, size, seed=11, cell=cell, radius=(4, 9))
    gen_s = time.perf_counter() - t0
    cfg = SegmentConfig(model=model, tile=tile, halo=halo, workers=workers, device=device, batch_size=batch_size, tta=tta)
    load_start = os.getloadavg()
    s = segment_scene(str(scene), out, cfg)
    mpx = size * size / 1e6
    stages = {k: round(mpx / v, 3) for k, v in s["timings_s"].items() if v > 0}
    res = {
        "machine": machine_info(),
        "commit": code_commit(),
        # this machine may be shared: the 1-minute load average when the run started and when it ended
        "load_average_1min": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "scene": {"size": size, "cell": cell, "megapixels": mpx, "dtype": "uint16", "objects": s["objects"],
                  "generate_s": round(gen_s, 1)},
        "settings": {"model": model, "tile": tile, "halo": s["tiling"]["halo"], "workers": workers, "device": device,
                     "batch_size": batch_size, "tta": tta},
        "timings_s": s["timings_s"],
        "mpx_s_per_stage": stages,
        "end_to_end_mpx_s": s["megapixels_per_s"],
        "peak_rss_process_tree_mb": s["peak_rss_process_tree_mb"],
        "worker_seconds": s["worker_seconds"],
    }
    if model != "classical":
        dev = pick_device(device)
        cores = os.cpu_count() or 1
        # The ceiling: the model alone on the same tiles and device. On a CPU, both ways of using the cores
        # are measured (one process with every thread; one single-thread process per worker) and the faster
        # is the one the pipeline is held to.
        bares = [bare_forward_mpx_s(model, str(scene), tile, batch_size, dev, threads=cores, tta=tta)]
        if dev == "cpu" and workers > 1:
            bares.append(bare_forward_mpx_s(model, str(scene), tile, batch_size, dev, threads=1, tta=tta, procs=workers))
        res["device"] = dev
        res["bare_forward"] = bares
        best = max(b["mpx_s"] for b in bares)
        res["bare_forward_best_mpx_s"] = round(best, 3)
        res["end_to_end_over_bare_forward"] = round(s["megapixels_per_s"] / best, 3)
    kind = "classical" if model == "classical" else "learned" + ("_tta" if tta else "")
    (out / f"bench_{kind}_{tag}_tile{tile}.json").write_text(json.dumps(res, indent=2))
    if not keep:
        for ext in ("parquet", "gpkg", "json", "geojson", "html", "quicklook.png", "quicklook.tif"):
            (out / f"bench_{tag}.{ext}").unlink(missing_ok=True)
        import shutil

        shutil.rmtree(out / f"bench_{tag}.ome.zarr", ignore_errors=True)
    return res
