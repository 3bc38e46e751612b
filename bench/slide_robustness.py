"""The real 40x DAPI slide as other scanners would give it — the slides "like it" that we do not have — and how
each model copes: the plausibility figures of bench/slide_check.py (share of objects on background, objects
per mm² of tissue, median area in µm²) for every (variant, model) pair, side by side in one run.

Variants of ``test3-DAPI-2-387.ndpi``'s DAPI channel (level 0, 0.228 µm/px), each written as a single-channel
OME-TIFF with its pixel size:

* ``40x``: as scanned;
* ``20x``: 2 × 2 mean (0.456 µm/px), as a 20x scan of the same tissue;
* ``blurred``: Gaussian σ 2 px plus read noise (σ 3 DN), an out-of-focus scan;
* ``dim``: contrast × 0.3 over a background offset of 12 DN plus noise (σ 2 DN), a weak stain / short exposure.

Run: PYTHONPATH=. python bench/slide_robustness.py [--models default,runs/nuclei_realworld2]
     [--slide ../shared/data/slides/test3-DAPI-2-387.ndpi] [--json docs/bench/slide_robustness.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def variants(grey: np.ndarray, mpp: float) -> dict[str, tuple[np.ndarray, float]]:
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    g = grey.astype(np.float32)
    h, w = (s // 2 * 2 for s in g.shape)
    half = g[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    blurred = ndi.gaussian_filter(g, 2.0) + rng.normal(0, 3, g.shape)
    dim = g * 0.3 + 12 + rng.normal(0, 2, g.shape)
    u8 = lambda a: np.clip(np.round(a), 0, 255).astype(np.uint8)  # noqa: E731
    return {"40x": (u8(g), mpp), "20x": (u8(half), mpp * 2), "blurred": (u8(blurred), mpp), "dim": (u8(dim), mpp)}


def write_ome(path: Path, img: np.ndarray, mpp: float) -> None:
    import tifffile

    tifffile.imwrite(path, img[None], ome=True, tile=(512, 512), compression="zlib",
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI"]}, "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                               "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})


def main() -> dict:
    import geopandas as gpd

    from pipeline.config import SegmentConfig
    from pipeline.evaluation.sanity import slide_figures
    from pipeline.io.sources import open_source
    from pipeline.runner import segment_scene
    from pipeline.stages.dispatch import dask_client

    ap = argparse.ArgumentParser()
    ap.add_argument("--slide", default="../shared/data/slides/test3-DAPI-2-387.ndpi")
    ap.add_argument("--models", default="default")
    ap.add_argument("--json")
    a = ap.parse_args()
    with open_source(a.slide) as src:
        rgb = src.read(0, 0, 0, src.height, src.width)
        mpp = src.pixel_size_um[0]
    grey = rgb.max(axis=0)  # the DAPI render: R = G = 0, the stain in blue
    rows = []
    with tempfile.TemporaryDirectory() as td, dask_client(workers=1) as client:
        for name, (img, px) in variants(grey, mpp).items():
            path = Path(td) / f"{name}.ome.tif"
            write_ome(path, img, px)
            for model in a.models.split(","):
                t0 = time.perf_counter()
                s = segment_scene(str(path), Path(td) / f"out_{name}_{Path(model).name}",
                                  SegmentConfig(model=model, tile=2048, workers=1, report=False, label_image=False,
                                                qupath_geojson=False), client=client)
                wall = time.perf_counter() - t0
                df = gpd.read_parquet(s["outputs"]["parquet"])
                fig = slide_figures(img, df.geometry.to_numpy(), df["area"].to_numpy(), px)
                row = {"variant": name, "model": model, "pixel_size_um": round(px, 4), "area_unit": s["area_unit"],
                       "scale": (s.get("object_scale") or {}).get("factor"), "wall_s": round(wall, 1), **fig}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
           "slide": a.slide, "rows": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
