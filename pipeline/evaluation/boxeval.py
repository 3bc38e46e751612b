"""``seamline evaluate --boxes``: predicted outlines' boxes against truth boxes (the NEON crown benchmark).

Truth is a box file — Pascal VOC XML, DeepForest CSV (pixel boxes of one image) or a vector file of
rectangles (map coordinates) — or any polygon file, whose outlines are reduced to boxes too. Predictions are
a Seamline output (GeoParquet/GeoPackage); each outline becomes its bounding box in the pixels of the scene
grid (from the run summary beside it, or ``--like RASTER``). Matching is one to one (Hungarian on IoU) at
box IoU ≥ 0.4 by default. With classes on both sides the score is also reported per class (matching within
the class); the overall figure ignores classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.evaluation.boxes import BOX_IOU, box_counts, box_scores
from pipeline.evaluation.boxfiles import boxes_of_image, read_box_file
from pipeline.evaluation.loading import grid_of, kind, read_vector, run_summary, summary_grid

__all__ = ["evaluate_boxes", "format_box_table", "polygon_pixel_boxes"]


def polygon_pixel_boxes(gdf, transform, crs=None) -> np.ndarray:
    """(N, 4) pixel boxes ``xmin, ymin, xmax, ymax`` of the geometries of ``gdf`` on a grid."""
    if crs is not None and gdf.crs is not None and gdf.crs != crs:
        gdf = gdf.to_crs(crs)
    inv = ~transform
    out = []
    for g in gdf.geometry:
        x0, y0, x1, y1 = g.bounds
        (c0, r0), (c1, r1) = inv * (x0, y0), inv * (x1, y1)
        out.append((min(c0, c1), min(r0, r1), max(c0, c1), max(r0, r1)))
    return np.asarray(out, np.float64).reshape(-1, 4)


def _truth(path: Path, image_name: str | None, grid):
    """(boxes, classes) of the truth file for the image ``image_name``."""
    if path.suffix.lower() in (".xml", ".csv"):
        table = read_box_file(path)
        rows = boxes_of_image(table, image_name) if image_name else None
        if rows is None and len(table) == 1:
            rows = next(iter(table.values()))
        elif rows is None:
            raise InputError(f"evaluate --boxes: {path} holds boxes of {len(table)} images, none named {image_name!r}; "
                             "pass a box file of the evaluated image only")
        return np.array([r[:4] for r in rows], np.float64).reshape(-1, 4), [r[4] for r in rows]
    gdf = read_vector(path)
    col = next((c for c in ("class", "label") if c in gdf.columns), None)
    boxes = polygon_pixel_boxes(gdf, grid[1], grid[2])
    return boxes, ([str(v) for v in gdf[col]] if col else ["object"] * len(boxes))


def evaluate_boxes(pred_path, truth_path, like=None, threshold: float = BOX_IOU) -> dict:
    """Box precision, recall and F1 overall and per class (see the module docstring)."""
    pred_p, truth_p = Path(pred_path), Path(truth_path)
    if kind(pred_p) != "vector":
        raise InputError(f"evaluate --boxes: {pred_p}: expected a Seamline output (.parquet/.gpkg) as the prediction")
    if not truth_p.is_file():
        raise InputError(f"evaluate --boxes: {truth_p}: file not found; check the path")
    summary = run_summary(pred_p)
    grid = grid_of(like)
    if grid is None:
        if summary is None:
            raise InputError(f"evaluate --boxes: {pred_p}: no run summary {pred_p.with_suffix('.json').name} beside it; "
                             "pass --like RASTER (the image it was segmented from)")
        grid = summary_grid(pred_p, summary)
    image_name = Path(str(summary.get("input", ""))).name if summary else None
    pred = read_vector(pred_p)
    pred_boxes = polygon_pixel_boxes(pred, grid[1], grid[2])
    pred_cls = [str(v) for v in pred["class"]] if "class" in pred.columns else ["object"] * len(pred_boxes)
    truth_boxes, truth_cls = _truth(truth_p, image_name, grid)
    result = {"prediction": str(pred_p), "ground_truth": str(truth_p), "iou_threshold": threshold,
              "all": box_scores(*box_counts(truth_boxes, pred_boxes, threshold=threshold))}
    classes = sorted(set(truth_cls))
    # Per class only where the two sides name classes in common: a one-class model (`tree`) against truth
    # labelled Alive/Dead has no class to score, only the overall row.
    if set(pred_cls) & set(classes) and (len(classes) > 1 or set(pred_cls) <= set(classes)):
        per = {}
        for c in sorted(set(truth_cls) | set(pred_cls)):
            t = truth_boxes[[i for i, v in enumerate(truth_cls) if v == c]]
            p = pred_boxes[[i for i, v in enumerate(pred_cls) if v == c]]
            per[c] = box_scores(*box_counts(t, p, threshold=threshold))
        result["per_class"] = per
    return result


def format_box_table(result: dict) -> str:
    """Plain-text table: one row per group (all, then each class)."""
    lines = [f"prediction:   {result['prediction']}", f"ground truth: {result['ground_truth']}",
             f"boxes matched one to one at box IoU >= {result['iou_threshold']}", "",
             f"{'':<16}{'truth':>8}{'pred':>8}{'TP':>6}{'FP':>6}{'FN':>6}{'precision':>11}{'recall':>8}{'F1':>8}"]
    groups = [("all", result["all"])] + sorted(result.get("per_class", {}).items())
    for name, r in groups:
        lines.append(f"{name:<16}{r['tp'] + r['fn']:>8}{r['tp'] + r['fp']:>8}{r['tp']:>6}{r['fp']:>6}{r['fn']:>6}"
                     f"{r['precision']:>11.3f}{r['recall']:>8.3f}{r['f1']:>8.3f}")
    return "\n".join(lines)
