"""Segment a real slide without ground truth and report plausibility figures (pipeline.evaluation.sanity),
plus overlay PNGs of outlines on crops (bright, dim and crowded regions) to look at.

Run: python bench/slide_check.py ../shared/data/slides/test3-DAPI-2-387.ndpi --out /tmp/slide_out
     [--model default] [--object-diameter PX|native] [--tile 1024] [--png-dir DIR]
The signal is the per-pixel maximum over the bands of level 0 (the DAPI channel of an RGB render).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def read_signal(path: str) -> tuple[np.ndarray, float | None]:
    """Level-0 signal (max over bands) and pixel size (µm) of a slide or TIFF."""
    try:
        import openslide

        s = openslide.OpenSlide(path)
        rgba = np.asarray(s.read_region((0, 0), 0, s.dimensions))
        mpp = s.properties.get("openslide.mpp-x")
        return rgba[..., :3].max(axis=2), float(mpp) if mpp else None
    except Exception:  # noqa: BLE001 - a figure left out of a benchmark table, never a run
        import tifffile

        a = tifffile.imread(path)
        return (a if a.ndim == 2 else a.max(axis=0 if a.shape[0] < a.shape[-1] else -1)), None


def overlay(signal: np.ndarray, geoms, box: tuple[int, int, int], path: Path) -> None:
    """Outlines (yellow) on a grey crop ``(row, col, size)``, written as PNG."""
    import shapely
    from PIL import Image, ImageDraw

    r, c, n = box
    crop = signal[r : r + n, c : c + n].astype(np.float32)
    hi = max(1.0, float(np.percentile(crop, 99.5)))
    img = Image.fromarray((np.clip(crop / hi, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    d = ImageDraw.Draw(img)
    view = shapely.box(c, r, c + n, r + n)
    for g in geoms[shapely.intersects(geoms, view)]:
        for p in getattr(g, "geoms", [g]):
            xy = np.asarray(p.exterior.coords) - [c, r]
            d.line([tuple(v) for v in xy], fill=(255, 220, 0), width=1)
    img.save(path)


def main() -> dict:
    import geopandas as gpd

    from pipeline.config import SegmentConfig
    from pipeline.evaluation.sanity import slide_figures
    from pipeline.runner import segment_scene

    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--object-diameter", dest="object_diameter")
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--pixel-size", dest="pixel_size", type=float)
    ap.add_argument("--png-dir")
    a = ap.parse_args()
    od = a.object_diameter
    od = None if od is None else (od if od == "native" else float(od))
    cfg = SegmentConfig(model=a.model, tile=a.tile, object_diameter=od,
                        pixel_size_um=(a.pixel_size, a.pixel_size) if a.pixel_size else None)
    t0 = time.perf_counter()
    s = segment_scene(a.input, a.out, cfg)
    wall = time.perf_counter() - t0
    df = gpd.read_parquet(s["outputs"]["parquet"])
    signal, mpp = read_signal(a.input)
    mpp = a.pixel_size or mpp or (s["pixel_size_um"] or [None])[0]
    areas = df["area"].to_numpy() if s["area_unit"] == "um2" else df["area"].to_numpy() * mpp**2
    fig = slide_figures(signal, df.geometry.to_numpy(), areas, mpp)
    res = {"input": a.input, "model": a.model, "area_unit_reported": s["area_unit"], "object_scale": s.get("object_scale"),
           "wall_s": round(wall, 1), **fig}
    if a.png_dir:
        out = Path(a.png_dir)
        out.mkdir(parents=True, exist_ok=True)
        geoms = df.geometry.to_numpy()
        # crops: the brightest and a dim 400-px region (by mean signal on a coarse grid), and the slide centre
        n = 400
        h, w = signal.shape
        grid = signal[: h // n * n, : w // n * n].reshape(h // n, n, w // n, n).mean(axis=(1, 3))
        order = np.argsort(grid.ravel())
        fg = order[grid.ravel()[order] > np.percentile(grid, 60)]
        picks = {"bright": order[-1], "dim": fg[0] if fg.size else order[len(order) // 2],
                 "middle": fg[len(fg) // 2] if fg.size else order[0]}
        for name, k in picks.items():
            rr, cc = divmod(int(k), grid.shape[1])
            overlay(signal, geoms, (rr * n, cc * n, n), out / f"overlay_{name}.png")
        res["pngs"] = sorted(str(p) for p in out.glob("overlay_*.png"))
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
