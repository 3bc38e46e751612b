"""``seamline evaluate``: score a prediction against ground truth (objects, or boxes), print the table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.errors import InputError, ParameterError
from pipeline.evaluation.boxeval import evaluate_boxes, format_box_table
from pipeline.evaluation.evaluate import evaluate_files, format_table
from pipeline.io import storage

__all__ = ["add_evaluate_command"]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.boxes and not 0 < args.box_iou <= 1:
        raise ParameterError(f"evaluate: --box-iou {args.box_iou}: expected a number in (0, 1], e.g. 0.4")
    # URLs (s3://, https://) are read into a temporary folder, with the run summary beside a prediction.
    with storage.local_copy(args.prediction, "evaluate: prediction", siblings=(".json",)) as pred, \
            storage.local_copy(args.ground_truth, "evaluate: ground truth") as truth:
        if args.boxes:  # box-level: outlines' boxes vs truth boxes (NEON crown benchmark), per class
            result = evaluate_boxes(pred, truth, like=args.like, threshold=args.box_iou)
            print(format_box_table(result))
        else:
            result = evaluate_files(pred, truth, tile=args.tile, seam_band=args.seam_band, like=args.like)
            print(format_table(result))
    if args.json:
        out = Path(args.json)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            raise InputError(f"evaluate: --json {out}: cannot write the results ({exc.strerror}); choose a writable path") from None
    return 0


def add_evaluate_command(subparsers):
    """Register ``seamline evaluate`` on an argparse sub-parsers object.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The result of ``parser.add_subparsers()``.

    Returns
    -------
    argparse.ArgumentParser
        The ``evaluate`` parser; its ``func(args)`` prints the table, writes ``--json`` and returns 0.
    """
    e = subparsers.add_parser(
        "evaluate", help="score a prediction against ground truth (AP, F1, PQ, splits/merges, seam vs interior)",
        description="Match predicted objects to ground-truth objects one-to-one on IoU and report AP at IoU "
                    "0.50:0.95, F1/precision/recall/PQ at 0.50, splits and merges, overall and for objects near "
                    "tile seams versus the interior.")
    e.add_argument("prediction", help="Seamline output (.parquet/.gpkg) or label image (.tif/.tiff/.png, 0 = background)")
    e.add_argument("ground_truth", help="label image (.tif/.tiff/.png) or polygons (.gpkg/.geojson/.parquet); "
                   "with --boxes also .xml/.csv boxes")
    e.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    e.add_argument("--seam-band", type=int, default=8, metavar="PX",
                   help="objects within PX pixels of a tile seam count as 'seam' (default 8)")
    e.add_argument("--tile", type=int, metavar="N",
                   help="tile size of the run (default: tiling.tile of the run summary beside the prediction)")
    e.add_argument("--like", metavar="RASTER", help="raster whose pixel grid to rasterize on when both inputs are polygons")
    e.add_argument("--boxes", action="store_true",
                   help="box-level scores: each outline's bounding box against truth boxes (VOC .xml, DeepForest .csv "
                        "or vector rectangles), one to one at --box-iou; per class when both sides have classes")
    e.add_argument("--box-iou", type=float, default=0.4, metavar="T", help="box IoU for a match with --boxes (default 0.4)")
    e.set_defaults(func=_cmd_evaluate)
    return e
