"""An H&E model through the pipeline as a user runs it, on CoNSeP's held-out test tiles (issue #20).

CoNSeP's 224 test patches (14 tiles, never trained or validated on; 10,330 nuclei) are laid out as one
40x "slide": 16 × 14 patches with 32 px of white glass between them (4,640 × 4,064 px), written as an RGB
OME-TIFF with its pixel size (``PhysicalSizeX/Y`` 0.25 µm), with its truth as a label TIFF and as a
GeoPackage of polygons carrying CoNSeP's cell-type group in ``class``. With ``--magnification 20`` the slide
is area-averaged 2 × 2 (0.5 µm, a 20x scan) and the truth taken every second pixel. Then, as a user would:

    python -m pipeline.cli segment consep_test_40x.ome.tif --model CHECKPOINT --out DIR
    python -m pipeline.cli evaluate DIR/consep_test_40x.parquet truth.tif --json …   # AP, F1, PQ, seams
    python -m pipeline.cli evaluate DIR/consep_test_40x.parquet truth.gpkg --like consep_test_40x.ome.tif  # per class

The glass keeps patches apart (no nucleus touches two patches), so the counts are those of the patches
scored one by one, and the run also gives the Mpx/s of a whole tiled scene. ``--patches K`` also runs the
first K patches as scenes of their own (one batch run; small single fields, as a hidden test set may hold).

Run: python bench/he_pipeline.py CHECKPOINT|default [--out runs/he_pipeline] [--json docs/bench/he_pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.bench import machine_info
from pipeline.training.consep import GROUP_NAMES, load_consep, mosaic

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
GAP = 32  # px of white glass between the patches of the mosaic


def write_ome(path: Path, rgb: np.ndarray, um: float) -> None:
    """(3, H, W) uint8 → an RGB OME-TIFF with its pixel size."""
    import tifffile

    tifffile.imwrite(path, np.moveaxis(rgb, 0, -1), photometric="rgb", ome=True,
                     metadata={"axes": "YXS", "PhysicalSizeX": um, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": um, "PhysicalSizeYUnit": "µm"})


def truth_polygons(path: Path, labels: np.ndarray, classes: np.ndarray | None) -> None:
    """The label image as polygons (pixel coordinates) with each object's cell-type group in ``class``."""
    import geopandas as gpd
    import shapely
    from rasterio import features

    geoms, names = {}, {}
    for g, v in features.shapes(labels.astype(np.int32), mask=labels > 0, connectivity=4):
        v = int(v)
        geoms.setdefault(v, []).append(shapely.geometry.shape(g))
        k = int(classes[v]) if classes is not None and v < len(classes) else -1
        names[v] = GROUP_NAMES[k] if k >= 0 else "unknown"
    ids = sorted(geoms)
    gdf = gpd.GeoDataFrame({"class": [names[i] for i in ids]},
                           geometry=[shapely.union_all(geoms[i]) for i in ids], crs=None)
    gdf.to_file(path, layer="objects", driver="GPKG")


def prepare(out: Path, magnification: int) -> tuple[Path, Path, Path, list]:
    """The test slide, its truth (label TIFF and polygons) and the patches."""
    import tifffile

    f = 40 // magnification
    out.mkdir(parents=True, exist_ok=True)
    samples = load_consep(DATA / "he_consep", "test", classes=GROUP_NAMES)
    canvas, truth, classes = mosaic(samples, cols=16, gap=GAP)
    if f > 1:
        h, w = canvas.shape[1] // f * f, canvas.shape[2] // f * f
        canvas = canvas[:, :h, :w].reshape(3, h // f, f, w // f, f).mean((2, 4)).round().astype(np.uint8)
        truth = truth[:h:f, :w:f]
    name = f"consep_test_{magnification}x"
    img, gt, gv = out / f"{name}.ome.tif", out / f"{name}_truth.tif", out / f"{name}_truth.gpkg"
    if not img.exists():
        write_ome(img, canvas, 0.25 * f)
        tifffile.imwrite(gt, truth.astype(np.uint32))
        truth_polygons(gv, truth, classes)
    return img, gt, gv, [(s.name, np.round(s.raw * 255).astype(np.uint8), s.labels) for s in samples]


def segment(inputs: list[Path], out: Path, model: str, extra: list[str]) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pipeline.cli", "segment", *map(str, inputs), "--out", str(out), "--model", model,
           "--quiet", *extra]
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def evaluate_cli(pred: Path, truth: Path, like: Path | None = None) -> dict:
    """``seamline evaluate`` as a command; its JSON."""
    js = pred.with_suffix(f".eval_{truth.suffix[1:]}.json")
    cmd = [sys.executable, "-m", "pipeline.cli", "evaluate", str(pred), str(truth), "--json", str(js)]
    if like is not None:
        cmd += ["--like", str(like)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(js.read_text())


def scores(r: dict) -> dict:
    a = r["all"]["at_0.5"]
    return {"ap50": round(a["ap"], 4), "f1": round(a["f1"], 4), "pq": round(a["pq"], 4), "sq": round(a["mean_matched_iou"], 4),
            "precision": round(a["precision"], 4), "recall": round(a["recall"], 4), "tp": a["tp"], "fp": a["fp"], "fn": a["fn"],
            "ap_50_95": round(r["all"]["ap_mean"], 4), "merges": r["all"]["merges"], "splits": r["all"]["splits"],
            "seam_f1": round(r["seam"]["at_0.5"]["f1"], 4) if "seam" in r else None}


def single_patches(patches, out: Path, model: str, extra: list[str], k: int) -> dict:
    """The first ``k`` patches as scenes of their own (40x OME-TIFFs), scored and summed."""
    import tifffile

    from pipeline.evaluation.evaluate import evaluate_files

    d = out / "patches"
    d.mkdir(parents=True, exist_ok=True)
    items = []
    for name, rgb, lab in patches[:k]:
        img, gt = d / f"{name}.ome.tif", d / f"{name}_truth.tif"
        write_ome(img, rgb, 0.25)
        tifffile.imwrite(gt, lab.astype(np.uint16))
        items.append((name, img, gt))
    res_dir = d / "results" / Path(model).name
    wall = segment([i[1] for i in items], res_dir, model, [*extra, "--no-report"])
    tot = {"tp": 0, "fp": 0, "fn": 0, "sum_iou": 0.0}
    for name, _, gt in items:
        a = evaluate_files(res_dir / f"{name}.parquet", gt)["all"]["at_0.5"]
        for key in tot:
            tot[key] += a[key]
    n = tot["tp"] + tot["fp"] + tot["fn"]
    return {"patches": len(items), "wall_s": round(wall, 1), "ap50": round(tot["tp"] / max(1, n), 4),
            "f1": round(2 * tot["tp"] / max(1, n + tot["tp"]), 4),
            "pq": round(tot["sum_iou"] / max(1e-9, tot["tp"] + 0.5 * (tot["fp"] + tot["fn"])), 4),
            **{key: tot[key] for key in ("tp", "fp", "fn")}}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--out", default="runs/he_pipeline")
    ap.add_argument("--json", default=None, help="also write the results here (e.g. docs/bench/he_pipeline.json)")
    ap.add_argument("--magnification", type=int, choices=(20, 40), default=40)
    ap.add_argument("--patches", type=int, default=0, help="also run the first K patches as scenes of their own")
    a, extra = ap.parse_known_args()
    out = Path(a.out) / f"{a.magnification}x"
    img, gt, gv, patches = prepare(out, a.magnification)
    res_dir = out / "results" / Path(a.checkpoint).name
    wall = segment([img], res_dir, a.checkpoint, extra)
    pred = res_dir / f"{img.name.removesuffix('.ome.tif')}.parquet"
    summary = json.loads(pred.with_suffix(".json").read_text())
    res: dict = {"machine": machine_info(), "checkpoint": a.checkpoint, "magnification": a.magnification,
                 "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
                 "slide": {"size_px": [summary["width"], summary["height"]], "wall_s": round(wall, 1),
                           "mpx_per_s": summary.get("megapixels_per_s"), "timings_s": summary.get("timings_s"),
                           "objects": summary.get("objects"), "counts_per_class": summary.get("counts_per_class"),
                           **{k: summary.get(k) for k in ("model", "model_choice", "object_scale", "tissue", "warnings")}},
                 "scores": scores(evaluate_cli(pred, gt))}
    per_class = evaluate_cli(pred, gv, like=img).get("per_class")
    if per_class:
        res["per_class"] = {c: {k: v[k] for k in ("n_gt", "n_pred", "tp", "fp", "fn", "f1")} for c, v in per_class.items()}
    if a.patches:
        res["single_patches"] = single_patches(patches, out, a.checkpoint, extra, a.patches)
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=1))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
