"""``seamline segment`` (and the other sub-commands that work on scenes)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli.options import add_run_options, config_from_args
from pipeline.config import SegmentConfig
from pipeline.evaluation.evaluate import evaluate_files, format_table
from pipeline.report.progress import Progress, use
from pipeline.runner import segment_batch, segment_scene
from pipeline.synthetic import write_scene

__all__ = ["add_segment_commands"]


def _cmd_segment(args: argparse.Namespace) -> int:

    cfg = config_from_args(args)

    def report(s: dict) -> None:
        name = Path(s["input"]).name
        if s.get("skipped"):
            print(f"{name}: outputs current, skipped ({s['objects']} objects in {s['outputs']['parquet']}; --force redoes it)")
            return
        print(f"{name}: {s['objects']} objects -> {s['outputs']['parquet']}, {s['outputs']['gpkg']} "
              f"({s['timings_s']['total']:.1f} s, {s['megapixels_per_s']:.2f} Mpx/s)")
        if "report" in s["outputs"]:
            print(f"  quicklook {s['outputs']['quicklook_png']}, report {s['outputs']['report']}")

    with use(None if args.quiet else Progress()):
        r = segment_batch(args.inputs, args.out, cfg, force=args.force, on_scene=report)
    if r.table:
        print(f"batch summary ({len(r.rows)} inputs): {r.table['parquet']}, {r.table['csv']}")
    if r.index:
        print(f"batch index: {r.index}")
    if r.errors:
        raise r.errors[0][1]
    return 0


def add_segment_commands(sub) -> None:
    s = sub.add_parser("segment", help="segment one or more scenes into per-object polygons",
                       description="Segment scenes or slides into one polygon per object. Outputs per input: "
                                   "<stem>.parquet, .gpkg, .json, .qupath.geojson, .ome.zarr, .quicklook.png, .html; "
                                   "per folder: summary.parquet/.csv (docs/OUTPUTS.md).")
    s.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="GeoTIFF/COG/VRT, whole-slide file (SVS, NDPI, other OpenSlide formats), OME-TIFF, OME-Zarr, "
                        "or any raster GDAL reads; a local path or a URL (s3://, gs://, https://)")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder (path or URL)")
    add_run_options(s)
    s.add_argument("--force", action="store_true", help="redo inputs whose outputs are current for these settings")
    s.set_defaults(func=_cmd_segment)
    add_demo_bench_commands(sub)


def _cmd_demo(args: argparse.Namespace) -> int:
    """Generate the bundled demo slide (with its ground truth), segment it, and score the result."""

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slide = out / "demo_nuclei.ome.tif"
    truth = out / "demo_nuclei_truth.tif"
    if not slide.exists() or not truth.exists():
        # 0.5 µm pixels: the synthetic nuclei (about 16 px across) are then 8 µm, the size of real ones, so the
        # object-scale rule runs the model at the slide's own resolution.
        print(f"writing demo slide {slide} ({args.size}x{args.size}, 0.5 um pixels) and its ground truth")
        write_scene(slide, args.size, args.size, crs=None, pixel_size_um=0.5, seed=2018, cell=26, radius=(5, 11),
                    fill=0.85, labels_path=truth)
    cfg = SegmentConfig(model=args.model, tile=512, workers=args.workers)

    with use(None if args.quiet else Progress()):
        s = segment_scene(str(slide), out, cfg)
    print(f"{s['objects']} objects in {s['timings_s']['total']:.1f} s ({s['megapixels_per_s']:.2f} Mpx/s); "
          f"median area {s['area_stats']['median']:.1f} {s['area_unit']}" if s["objects"] else "no objects found")
    print(f"outputs: {s['outputs']['parquet']}, {s['outputs']['gpkg']}, {s['outputs']['json']}")
    res = evaluate_files(s["outputs"]["parquet"], str(truth))
    print(format_table(res))
    if "report" in s["outputs"]:
        print(f"quicklook: {s['outputs']['quicklook_png']}")
        print(f"report:    {s['outputs']['report']}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.bench import run_bench  # late: the benchmark loads torch

    res = run_bench(args.out, args.size, args.model, args.tile, args.halo, args.workers, args.device, args.batch_size,
                    tta=args.tta, cell=args.cell)
    print(json.dumps(res, indent=2))
    return 0


def add_demo_bench_commands(sub) -> None:
    d = sub.add_parser("demo", help="segment the bundled demo slide (generated) with the shipped model and score it",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--out", default="demo_out", metavar="DIR", help="output folder")
    d.add_argument("--size", type=int, default=2048, help="side of the generated slide in pixels (0.5 um pixels)")
    d.add_argument("--model", default="default", help="'default' (shipped nuclei model) or 'classical'")
    d.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    d.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    d.set_defaults(func=_cmd_demo)

    b = sub.add_parser("bench", help="throughput per stage, end to end vs bare forward pass, peak memory",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--out", default="bench_out", metavar="DIR", help="where the scene, outputs and the JSON go")
    b.add_argument("--size", type=int, default=8192, help="scene side in pixels (24000 for the out-of-core check)")
    b.add_argument("--model", default="classical", help="a --model value")
    b.add_argument("--tile", type=int, default=1024, help="tile size in pixels")
    b.add_argument("--halo", type=int, help="context in pixels (default: the model's receptive field; 64 for classical)")
    b.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    b.add_argument("--device", default="auto", help="auto, cpu or cuda")
    b.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                   help="windows per forward pass (default: 1 on a CPU, 4 on a GPU)")
    b.add_argument("--tta", action="store_true", help="learned models: test-time augmentation (4 mirror images)")
    b.add_argument("--cell", type=int, default=24, help="objects' grid spacing in px: 24 dense (default), 96 sparse")
    b.set_defaults(func=_cmd_bench)
