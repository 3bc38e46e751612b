"""``seamline diff OLD NEW --out DIR``: what changed between two runs of ``seamline segment``, object by object."""

from __future__ import annotations

import argparse
import sys

from pipeline.diff import diff_runs
from pipeline.errors import ParameterError

__all__ = ["add_diff_command"]


def _shift(text: str) -> tuple[float, float]:
    try:
        dx, dy = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DX,DY in map units (pixels for images without "
                                         "georeferencing), e.g. 0.75,-0.5") from None
    return dx, dy


def _cmd_diff(args: argparse.Namespace) -> int:
    if args.old == args.new:
        raise ParameterError(f"OLD and NEW are the same file ({args.old}); pass the runs of two dates")
    log = None if args.quiet else (lambda s: print(f"seamline: {s}", file=sys.stderr, flush=True))
    s = diff_runs(args.old, args.new, args.out, area_change=args.area_change, min_iou=args.min_iou,
                  max_shift_px=args.max_shift, shift=args.shift, min_area=args.min_area, report=not args.no_report,
                  log=log)
    c = s["counts"]
    sh = s["shift"]
    px = f" = {sh['dx_px']:+.2f}, {sh['dy_px']:+.2f} px" if "dx_px" in sh else ""
    how = "estimated" if sh["estimated"] else ("given" if args.shift else "none")
    print(f"{s['old']['stem']} -> {s['new']['stem']}: " + ", ".join(f"{c[k]} {k}" for k in c if c[k] or k in ("new", "gone", "grown", "shrunk"))
          + f"; shift {sh['dx']:+.3g}, {sh['dy']:+.3g}{px} ({how})")
    outs = s["outputs"]
    print("  " + ", ".join(outs[k] for k in ("parquet", "gpkg", "json") if k in outs)
          + (f"\n  report {outs['report']}" if "report" in outs else ""))
    return 0


def add_diff_command(sub) -> None:
    d = sub.add_parser("diff", help="object-level change between two runs (new, gone, grown, shrunk, same)",
                       description="Match the objects of two runs of `seamline segment` one to one by overlap, after "
                                   "removing the global shift between them, and write DIR/<NEW stem>.changes.parquet, "
                                   ".gpkg (QGIS style by change), .json (counts, shift, common footprint) and .html.")
    d.add_argument("old", metavar="OLD", help="GeoParquet of the earlier run (DIR/<stem>.parquet; path or URL)")
    d.add_argument("new", metavar="NEW", help="GeoParquet of the later run")
    d.add_argument("--out", required=True, metavar="DIR", help="output folder or prefix")
    d.add_argument("--area-change", dest="area_change", type=float, default=1.3, metavar="RATIO",
                   help="grown when new/old area >= RATIO, shrunk when <= 1/RATIO (default 1.3)")
    d.add_argument("--min-iou", dest="min_iou", type=float, default=0.1, metavar="IOU",
                   help="pairs overlapping less than this are not matched (default 0.1)")
    d.add_argument("--max-shift", dest="max_shift", type=float, default=10.0, metavar="PX",
                   help="largest co-registration shift looked for, in pixels of the coarser run (default 10; 0: none)")
    d.add_argument("--min-area", dest="min_area", type=float, default=0.0, metavar="AREA",
                   help="leave objects smaller than AREA (the runs' area unit: m2 when georeferenced) out of both "
                        "runs: a minimum mapping unit against fragments that flicker (default 0: keep all)")
    d.add_argument("--shift", type=_shift, metavar="DX,DY",
                   help="use this shift of NEW relative to OLD (map units) instead of estimating it")
    d.add_argument("--no-report", dest="no_report", action="store_true", help="skip the HTML page")
    d.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    d.set_defaults(func=_cmd_diff)
