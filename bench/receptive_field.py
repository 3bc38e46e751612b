"""How far a learned model looks: the effective receptive field that sets its default halo.

The heads of a central 64 x 64 box are computed once with the full 768 x 768 context, then again with
everything farther than ``d`` pixels from the box wiped to zero (the harshest change of context a tile can
see). The largest change of any head probability in the box, per ``d``, says how much halo makes a tiled
run equal to a whole-image run; write the ``d`` where it falls below ~0.01 into the checkpoint's
``receptive_field_px`` (``seamline train`` config key).

Run: python bench/receptive_field.py [--model default] [--image SCENE.tif]
(an H&E model: ``--image`` an H&E scene, e.g. the CoNSeP test slide of bench/he_pipeline.py)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

SIZE, BOX = 768, 64


def main() -> dict:
    import rasterio

    from pipeline.models.normalize import apply_normalization, percentiles
    from pipeline.models.registry import load_model
    from pipeline.models.stain import fixed_percentiles
    from pipeline.synthetic import write_periodic_scene

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--image", help="a GeoTIFF/TIFF of at least 768 x 768 (default: a generated nuclei scene)")
    ap.add_argument("--distances", default="32,64,96,128,160,192,256")
    a = ap.parse_args()
    model = load_model(a.model, device="cpu")
    with tempfile.TemporaryDirectory() as td:
        path = a.image or str(Path(td) / "scene.tif")
        if not a.image:
            write_periodic_scene(path, 2048, seed=11, cell=24, radius=(4, 9))
        with rasterio.open(path) as ds:
            img = ds.read(window=((0, SIZE), (0, SIZE)))
    # the scene normalisation the checkpoint names: percentiles, or the fixed range of a brightfield model
    stats = fixed_percentiles(getattr(model, "meta", None), img.dtype, img.shape[0]) or percentiles(img.astype(np.float32))
    x = model.prepare(apply_normalization(img.astype(np.float32), stats))
    base = model.predict_heads(x[None])[0]
    c0, c1 = (SIZE - BOX) // 2, (SIZE + BOX) // 2
    rows = []
    for d in (int(v) for v in a.distances.split(",")):
        y = x.copy()
        far = np.ones(y.shape[1:], bool)
        far[max(0, c0 - d) : c1 + d, max(0, c0 - d) : c1 + d] = False
        y[:, far] = 0.0
        diff = np.abs(model.predict_heads(y[None])[0] - base)[:, c0:c1, c0:c1]
        rows.append({"distance_px": d, "max_change": round(float(diff.max()), 4),
                     "p99_change": round(float(np.percentile(diff, 99)), 4)})
        print(f"context wiped beyond {d:4d} px: largest change {rows[-1]['max_change']:.4f}, "
              f"99th percentile {rows[-1]['p99_change']:.4f}", flush=True)
    res = {"model": a.model, "image": a.image or "generated nuclei scene", "box_px": BOX, "window_px": SIZE, "rows": rows}
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
