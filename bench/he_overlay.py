"""Look at a seamline run on a real H&E slide: a crop of the slide with the run's polygons drawn on it, and
the largest objects (issue #20: the fluorescence model made stroma objects of 10⁵ px on H&E).

Run, for the real SVS (``../shared/data/slides/CMU-1-Small-Region.svs``, 20x, 0.499 µm/px):

    seamline segment SLIDE --out runs/he_svs/after                   # --model default: the H&E model
    seamline segment SLIDE --model nuclei --out runs/he_svs/before   # the fluorescence model, as before #20
    python bench/he_overlay.py SLIDE runs/he_svs/before/STEM.parquet runs/he_svs/after/STEM.parquet \\
        --crop 800 1200 600 450 --png docs/he_svs_overlay.png --json docs/bench/he_svs_overlay.json

The PNG has the runs side by side (green outlines), in the order given; the JSON the object counts, the five
largest areas (px and µm²) and the median, per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
from PIL import Image, ImageDraw

from pipeline.io.sources import open_source


def crop_with_polygons(rgb: Image.Image, gdf: gpd.GeoDataFrame, x0: int, y0: int) -> Image.Image:
    img = rgb.copy()
    d = ImageDraw.Draw(img)
    for geom in gdf.cx[x0: x0 + img.width, y0: y0 + img.height].geometry:
        for poly in getattr(geom, "geoms", [geom]):
            xy = [(x - x0, y - y0) for x, y in np.asarray(poly.exterior.coords)]
            d.line(xy, fill=(0, 255, 0), width=1)
    return img


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide")
    ap.add_argument("runs", nargs="+", help="GeoParquet files of seamline runs on SLIDE (pixel coordinates)")
    ap.add_argument("--crop", type=int, nargs=4, default=(800, 1200, 600, 450), metavar=("X", "Y", "W", "H"))
    ap.add_argument("--png", default="runs/he_svs_overlay.png")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    x0, y0, w, h = a.crop
    with open_source(a.slide) as src:
        rgb = Image.fromarray(np.moveaxis(src.read(0, y0, x0, h, w, [0, 1, 2]), 0, -1).astype(np.uint8))
        um = src.pixel_size[0] if src.pixel_unit == "um" and src.pixel_size else None
    panels, res = [], {"slide": a.slide, "crop_xywh": [x0, y0, w, h], "pixel_size_um": um, "runs": {}}
    for run in a.runs:
        g = gpd.read_parquet(run)
        if len(g) and g.total_bounds[3] <= 0:  # placed as GDAL places an image without georeferencing: y = -row
            g = g.set_geometry(g.geometry.scale(1.0, -1.0, origin=(0, 0)))
        area = np.sort(g.geometry.area.to_numpy())
        res["runs"][run] = {"objects": len(g), "largest_px": area[-5:][::-1].round(0).tolist(),
                            "median_px": float(np.median(area)) if area.size else None,
                            **({"largest_um2": (area[-5:][::-1] * um * um).round(0).tolist()} if um else {})}
        panels.append(crop_with_polygons(rgb, g, x0, y0))
    out = Image.new("RGB", (w * len(panels) + 8 * (len(panels) - 1), h), "white")
    for i, p in enumerate(panels):
        out.paste(p, (i * (w + 8), 0))
    Path(a.png).parent.mkdir(parents=True, exist_ok=True)
    out.save(a.png, optimize=True)
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
