"""Benchmark: a slide with about half background, end to end, before and after the whole-slide work (issue #10's goal).

The slide is the one of ``bench/tissue_skip.py``: the densest 2048 rows of the real Hamamatsu DAPI NDPI next to
an equally large area of that slide's own glass noise (a tiled pyramidal OME-TIFF, 0.228 µm pixels). Both runs
go through the same process and Dask cluster, one after the other, with the shipped nuclei model:

* ``before``: the path as it was — eager PyTorch forward pass, every tile run (no tissue detection), the slide
  at its native resolution, no report, QuPath GeoJSON or label image;
* ``after``: ``configs/microscopy.yaml`` as shipped — ONNX Runtime, tissue detection, the slide rescaled to the
  model's nominal nucleus size (from its pixel size), and every output;
* ``after_native``: the same at the slide's native resolution (``object_diameter: native``), to separate what
  ONNX Runtime and tissue detection give (same working grid as ``before``) from what the rescaling gives.

Throughput is Mpx of *slide area* (level-0 pixels) per second of wall time, so skipping glass and reading a
coarser working grid both count, as they do for a user.

    PYTHONPATH=$PWD python bench/slide_throughput.py [--out docs/bench/slide_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tissue_skip import build_slide  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "microscopy.yaml"
BEFORE = {"inference": "eager", "tissue": {"enabled": False}, "object_diameter": "native", "report": False,
          "qupath_geojson": False, "label_image": False}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/bench/slide_throughput.json")
    a = ap.parse_args()
    from pipeline.config import SegmentConfig
    from pipeline.config_file import load_yaml_config
    from pipeline.runner import segment_scene
    from pipeline.stages.dispatch import dask_client

    after_cfg = load_yaml_config(CONFIG, SegmentConfig)
    before_cfg = load_yaml_config(CONFIG, SegmentConfig, BEFORE)
    native_cfg = load_yaml_config(CONFIG, SegmentConfig, {"object_diameter": "native"})
    tmp = Path(tempfile.mkdtemp(prefix="slide_bench_"))
    try:
        slide = tmp / "half_background.ome.tif"
        meta = build_slide(slide)
        area_mpx = meta["height"] * meta["width"] / 1e6
        runs = {}
        with dask_client(after_cfg.workers, 1, None, after_cfg.memory_limit) as client:
            for name, cfg in (("before", before_cfg), ("after", after_cfg), ("after_native", native_cfg)):
                t = time.perf_counter()
                s = segment_scene(str(slide), tmp / name, cfg, client=client)
                sec = time.perf_counter() - t
                runs[name] = {"seconds": round(sec, 2), "slide_mpx_per_s": round(area_mpx / sec, 3),
                              "objects": s["objects"], "working_size": [s["width"], s["height"]],
                              "tiles": s["tiling"]["tiles"], "tiles_processed": s["tiles_processed"],
                              "tiles_skipped": s.get("tiles_skipped"), "timings_s": s["timings_s"],
                              "settings": {k: getattr(cfg, k) for k in ("inference", "object_diameter", "tile")}
                              | {"tissue": cfg.tissue.enabled, "report": cfg.report}}
        result = {"slide": meta, "slide_area_mpx": round(area_mpx, 2), "runs": runs,
                  "speedup_after_over_before": round(runs["before"]["seconds"] / runs["after"]["seconds"], 2),
                  "speedup_after_native_over_before": round(runs["before"]["seconds"] / runs["after_native"]["seconds"], 2),
                  "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                              "processor": platform.processor() or platform.machine()}}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(json.dumps(result, indent=2, default=str))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
