"""``seamline segment`` (and the other sub-commands that work on scenes)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_segment_commands", "build_segment_config"]


def build_segment_config(args: argparse.Namespace):
    """Config file first, then flags given on the command line on top."""
    from pydantic import ValidationError

    from pipeline.config import SegmentConfig
    from pipeline.configio import load_yaml_config, validation_message
    from pipeline.errors import ConfigError

    overrides = {}
    for key in ("model", "tile", "halo", "workers", "scheduler", "device", "batch_size", "inference"):
        v = getattr(args, key, None)
        if v is not None:
            overrides[key] = v
    if getattr(args, "keep_intermediate", False):
        overrides["keep_intermediate"] = True
    if getattr(args, "tta", False):
        overrides["tta"] = True
    if getattr(args, "no_report", False):
        overrides["report"] = False
    if args.config:
        return load_yaml_config(args.config, SegmentConfig, overrides)
    try:
        return SegmentConfig.model_validate(overrides)
    except ValidationError as exc:
        raise ConfigError(validation_message("seamline segment", exc)) from None


def _cmd_segment(args: argparse.Namespace) -> int:
    from pipeline.stages.dispatch import cluster_client
    from pipeline.errors import ParameterError
    from pipeline.io.sources import open_source, resolve_channels, stem_of
    from pipeline.runner import segment_scene

    cfg = build_segment_config(args)
    # Validate every input before any work: a bad file in a batch must not leave half the outputs behind.
    stems = {}
    for p in args.inputs:
        with open_source(p, cfg.reader, cfg.series) as src:  # any format; bad channels fail here too
            resolve_channels(src, cfg.bands if cfg.bands is not None else cfg.channels,
                             "bands" if cfg.bands is not None else "channels")
        stem = stem_of(p)
        if stem in stems:
            raise ParameterError(f"inputs {stems[stem]} and {p} would both write {stem}.*; rename one or run them separately")
        stems[stem] = p
    from pipeline.runner import check_model, resolve_halo

    model, md = check_model(cfg.model)  # a broken checkpoint fails here, before the cluster starts
    resolve_halo(cfg, model, md)  # and a default halo (the model's) that does not fit the tile size
    from pipeline.io import storage

    out = args.out
    if storage.is_local(out) and Path(storage.local_path(out)).exists() and not Path(storage.local_path(out)).is_dir():
        raise ParameterError(f"--out {out}: exists and is not a folder; pass a folder path")
    from pipeline.io.batch import batch_row, failed_row, write_batch_summary
    from pipeline.report.progress import Progress, use

    rows, first_error, results = [], None, []
    with use(None if args.quiet else Progress()), \
            cluster_client(cfg) as client:
        for p in args.inputs:
            try:
                s = segment_scene(p, out, cfg, client=client)
            except Exception as exc:  # one failed slide does not stop the batch; it is reported, then raised
                first_error = first_error or exc
                rows.append(failed_row(p, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
                continue
            rows.append(batch_row(s))
            results.append(s)
            print(f"{Path(p).name}: {s['objects']} objects -> {s['outputs']['parquet']}, {s['outputs']['gpkg']} "
                  f"({s['timings_s']['total']:.1f} s, {s['megapixels_per_s']:.2f} Mpx/s)")
            if "report" in s["outputs"]:
                print(f"  quicklook {s['outputs']['quicklook_png']}, report {s['outputs']['report']}")
    if any(r["status"] == "ok" for r in rows):  # nothing finished: nothing written (no partial outputs)
        paths = write_batch_summary(out, rows)
        print(f"batch summary ({len(rows)} inputs): {paths['parquet']}, {paths['csv']}")
    if len(results) > 1 and cfg.report:
        from pipeline.report.stage import write_index

        if storage.is_local(out):
            print(f"batch index: {write_index(storage.local_path(out), results)}")
        else:  # rendered locally, then one object (thumbnails only from local quicklooks)
            import tempfile

            with tempfile.TemporaryDirectory() as d:
                page = write_index(Path(d), results)
                storage.write_bytes(storage.join(out, page.name), page.read_bytes())
            print(f"batch index: {storage.join(out, page.name)}")
    if first_error is not None:
        raise first_error
    return 0


def add_segment_commands(sub) -> None:
    s = sub.add_parser("segment", help="segment one or more scenes into per-object polygons")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="GeoTIFF/COG or (OME-)TIFF; local path or fsspec URL")
    s.add_argument("--out", required=True, metavar="DIR", help="output folder: <stem>.parquet, <stem>.gpkg, <stem>.json")
    s.add_argument("--config", metavar="FILE", help="YAML config (see configs/); flags override it")
    s.add_argument("--model", help="'classical', 'default' (shipped nuclei model), 'buildings' (shipped building model), 'trees' (shipped tree-crown model) or a checkpoint path")
    s.add_argument("--tile", type=int, help="tile size in pixels (default 1024)")
    s.add_argument("--halo", type=int, help="context around each tile in pixels (default: the model's receptive "
                                             "field, 64 for classical; must be < tile)")
    s.add_argument("--workers", type=int, help="LocalCluster worker processes (default 2)")
    s.add_argument("--scheduler", metavar="ADDRESS", help="use an existing Dask scheduler instead of a LocalCluster")
    s.add_argument("--device", help="auto, cpu or cuda")
    s.add_argument("--batch-size", dest="batch_size", type=int, help="tiles per model call")
    s.add_argument("--inference", choices=["eager", "bf16", "compile", "onnx"],
                   help="CPU forward pass of a learned model (default from the config; see docs/BENCHMARKS.md)")
    s.add_argument("--keep-intermediate", action="store_true", help="keep the zarr store and tile parts")
    s.add_argument("--tta", action="store_true", help="learned models: average over 4 mirror images (4x slower)")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr (stages, tiles, Mpx/s, ETA)")
    s.add_argument("--no-report", dest="no_report", action="store_true",
                   help="skip <stem>.quicklook.png/.tif and <stem>.html (and the batch index.html)")
    s.set_defaults(func=_cmd_segment)

    try:
        from pipeline.evaluation.evaluate import add_evaluate_command
    except ImportError:  # pragma: no cover - evaluate lands separately
        pass
    else:
        add_evaluate_command(sub)
    add_demo_bench_commands(sub)


def _cmd_demo(args: argparse.Namespace) -> int:
    """Generate the bundled demo slide (with its ground truth), segment it, and score the result."""
    from pipeline.config import SegmentConfig
    from pipeline.evaluation.evaluate import evaluate_files, format_table
    from pipeline.runner import segment_scene
    from pipeline.synthetic import write_scene

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
    from pipeline.report.progress import Progress, use

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
    from pipeline.bench import run_bench

    res = run_bench(args.out, args.size, args.model, args.tile, args.halo, args.workers, args.device, args.batch_size,
                    tta=args.tta, cell=args.cell)
    print(json.dumps(res, indent=2))
    return 0


def add_demo_bench_commands(sub) -> None:
    d = sub.add_parser("demo", help="segment the bundled demo slide (generated) with the shipped model and score it")
    d.add_argument("--out", default="demo_out", metavar="DIR")
    d.add_argument("--size", type=int, default=2048)
    d.add_argument("--model", default="default", help="'default' (shipped nuclei model) or 'classical'")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    d.set_defaults(func=_cmd_demo)

    b = sub.add_parser("bench", help="throughput per stage, end to end vs bare forward pass, peak memory")
    b.add_argument("--out", default="bench_out", metavar="DIR")
    b.add_argument("--size", type=int, default=8192, help="scene side in pixels (24000 for the out-of-core check)")
    b.add_argument("--model", default="classical")
    b.add_argument("--tile", type=int, default=1024)
    b.add_argument("--halo", type=int, help="default: the model's receptive field (64 for classical)")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--device", default="auto")
    b.add_argument("--batch-size", dest="batch_size", type=int, default=4)
    b.add_argument("--tta", action="store_true", help="learned models: test-time augmentation (4 mirror images)")
    b.add_argument("--cell", type=int, default=24, help="objects' grid spacing in px: 24 dense (default), 96 sparse")
    b.set_defaults(func=_cmd_bench)
