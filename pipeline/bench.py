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
import time
from pathlib import Path

import numpy as np

__all__ = ["machine_info", "bare_forward_mpx_s", "run_bench"]


def machine_info() -> dict:
    import psutil

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "gpu": None}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def bare_forward_mpx_s(model_spec: str, zarr_or_tif: str, tile: int, batch_size: int, device: str, threads: int,
                       max_tiles: int = 64, tta: bool = False) -> dict:
    """Forward pass only (no I/O, no post-processing) over up to ``max_tiles`` tiles of the scene."""
    import rasterio
    from rasterio.windows import Window as RWindow

    from .ingest import scene_statistics
    from .models.registry import load_model
    from .normalize import apply_normalization

    model = load_model(model_spec, device=device, threads=threads, tta=tta)
    with rasterio.open(zarr_or_tif) as ds:
        n_r, n_c = ds.height // tile, ds.width // tile
        idx = [(r, c) for r in range(max(1, n_r)) for c in range(max(1, n_c))][:max_tiles]
        tiles = [ds.read(window=RWindow(c * tile, r * tile, min(tile, ds.width), min(tile, ds.height))) for r, c in idx]
    stats = scene_statistics([t.reshape(t.shape[0], -1)[:, ::97] for t in tiles])
    batch = [model.prepare(apply_normalization(t, stats["percentiles"])) for t in tiles]
    model.predict_heads(np.stack(batch[:1]))  # warm-up
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    t0 = time.perf_counter()
    px = 0
    for s in range(0, len(batch), batch_size):
        b = np.stack(batch[s : s + batch_size])
        model.predict_heads(b)
        px += b.shape[0] * b.shape[2] * b.shape[3]
    dt = time.perf_counter() - t0
    return {"tiles": len(batch), "megapixels": px / 1e6, "seconds": dt, "mpx_s": px / 1e6 / dt}


def run_bench(out: str | Path, size: int, model: str, tile: int, halo: int | None, workers: int, device: str = "auto",
              batch_size: int = 4, keep: bool = False, tta: bool = False) -> dict:
    from .config import SegmentConfig
    from .runner import segment_scene
    from .synthetic import write_periodic_scene

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scene = out / f"bench_{size}.tif"
    t0 = time.perf_counter()
    if not scene.exists():
        write_periodic_scene(scene, size, seed=11, cell=24, radius=(4, 9))
    gen_s = time.perf_counter() - t0
    cfg = SegmentConfig(model=model, tile=tile, halo=halo, workers=workers, device=device, batch_size=batch_size, tta=tta,
                        threads_per_worker=max(1, (os.cpu_count() or 2) // workers))
    s = segment_scene(str(scene), out, cfg)
    mpx = size * size / 1e6
    stages = {k: round(mpx / v, 3) for k, v in s["timings_s"].items() if v > 0}
    res = {
        "machine": machine_info(),
        "scene": {"size": size, "megapixels": mpx, "dtype": "uint16", "objects": s["objects"], "generate_s": round(gen_s, 1)},
        "settings": {"model": model, "tile": tile, "halo": s["tiling"]["halo"], "workers": workers, "device": device,
                     "batch_size": batch_size, "tta": tta},
        "timings_s": s["timings_s"],
        "mpx_s_per_stage": stages,
        "end_to_end_mpx_s": s["megapixels_per_s"],
        "peak_rss_process_tree_mb": s["peak_rss_process_tree_mb"],
        "worker_seconds": s["worker_seconds"],
    }
    if model != "classical":
        bare = bare_forward_mpx_s(model, str(scene), tile, batch_size, s.get("device", device) if device != "auto" else "auto",
                                  threads=os.cpu_count() or 1, tta=tta)
        res["bare_forward"] = bare
        res["end_to_end_over_bare_forward"] = round(s["megapixels_per_s"] / bare["mpx_s"], 3)
    kind = "classical" if model == "classical" else "learned" + ("_tta" if tta else "")
    (out / f"bench_{kind}_{size}_tile{tile}.json").write_text(json.dumps(res, indent=2))
    if not keep:
        for ext in ("parquet", "gpkg", "json"):
            (out / f"bench_{size}.{ext}").unlink(missing_ok=True)
    return res
