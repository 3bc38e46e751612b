"""``seamline adapt`` (a local model from local labels, or from a corrected review package) and ``seamline review``
(the windows of a run to correct in QGIS or QuPath)."""

from __future__ import annotations

import argparse

from pipeline.errors import ParameterError

__all__ = ["add_adapt_commands"]


def _print_result(rec: dict) -> None:
    b, a = rec["before"], rec["after"]
    print(f"held-out F1 at IoU 0.5: {b['held_out']['f1']:.3f} -> {a['held_out']['f1']:.3f} "
          f"({a['held_out']['images']} images); trained-on: {b['trained']['f1']:.3f} -> {a['trained']['f1']:.3f}")
    print(f"checkpoint {rec['checkpoint']} (.safetensors + .json), card {rec['card']}")


def _cmd_adapt(args: argparse.Namespace) -> int:
    # late: torch and the training stack load only when training
    from pipeline.training.adapt import WEB_MERCATOR_Z19, adapt, adapt_from_review

    if args.from_review:
        if args.scenes or args.labels:
            raise ParameterError("adapt: --from-review trains on the package's windows; give no SCENE or --labels with it")
        rec = adapt_from_review(args.from_review, args.out, model=args.model, minutes=args.minutes,
                                holdout=args.holdout, seed=args.seed, threads=args.threads, epochs=args.epochs)
    else:
        if not args.scenes or not args.labels:
            raise ParameterError("adapt: pass the imagery (SCENE ...) and its outlines (--labels FILE ...), or "
                                 "--from-review REVIEW; e.g. seamline adapt chips/*.tif --labels buildings.gpkg --out local")
        rec = adapt(args.scenes, args.labels, args.out, model=args.model or "buildings", minutes=args.minutes,
                    holdout=args.holdout, train_fraction=args.train_fraction, seed=args.seed,
                    place_size=args.place_size or WEB_MERCATOR_Z19, area=args.area, threads=args.threads,
                    hard_negatives=args.hard_negatives, epochs=args.epochs)
    _print_result(rec)
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    from pipeline.training.review import review

    rec = review(args.run, args.out, windows=args.windows, window_m=args.window_m, window_px=args.window_px)
    print(f"{len(rec['windows'])} windows, {rec['objects']} objects to check -> {args.out}/review.gpkg "
          f"(layers objects, windows), {args.out}/windows/, {args.out}/README.md")
    return 0


def add_adapt_commands(sub) -> None:
    """Register ``seamline adapt`` and ``seamline review`` on the sub-parsers ``sub``."""
    a = sub.add_parser(
        "adapt", help="fine-tune a shipped model on local labels (OSM extract or corrected outlines), with held-out F1",
        description="The fAIr workflow in one command: cut the scenes into places, hold out whole places, score the "
                    "base model on them, fine-tune it on the rest (CPU, resumable: run again to continue), score it "
                    "again, write OUT/<OUT name>.safetensors + .json (the card in the JSON) and OUT/CARD.md.")
    a.add_argument("scenes", nargs="*", metavar="SCENE", help="imagery: web-map chips (GeoTIFF, JPEG + .aux.xml) or whole scenes")
    a.add_argument("--labels", nargs="+", metavar="FILE", help="building outlines: GeoPackage, GeoJSON, .osm.pbf or .osm")
    a.add_argument("--from-review", metavar="REVIEW", help="instead: the package of seamline review, after editing")
    a.add_argument("--out", required=True, metavar="DIR", help="run folder: the checkpoint, its card and the resumable state")
    a.add_argument("--model", help="the base model (default: buildings; with --from-review the reviewed run's model)")
    a.add_argument("--minutes", type=float, default=10.0, help="training time (default 10; the last epoch is kept)")
    a.add_argument("--epochs", type=int, help="stop after this many epochs if --minutes has not run out first")
    a.add_argument("--holdout", type=float, default=0.2, help="share of the places (or windows) held out (default 0.2)")
    a.add_argument("--train-fraction", type=float, default=1.0, metavar="F",
                   help="train on this share of the remaining places (learning curves; default 1)")
    a.add_argument("--area", nargs="+", metavar="FILE",
                   help="polygons of the area the labels cover completely (default: the labels' convex hull)")
    a.add_argument("--place-size", type=float, metavar="M",
                   help="side of a place in Web Mercator metres (default 76.437: a zoom-19 web-map tile)")
    a.add_argument("--hard-negatives", type=float, default=0.0, metavar="SHARE",
                   help="share of crops centred on mined false positives (complete labels only; default 0)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    a.set_defaults(func=_cmd_adapt)

    r = sub.add_parser(
        "review", help="write a QGIS/QuPath package of the windows where a run is least sure, to correct",
        description="Pick the windows of a run whose objects have low scores or implausible sizes or shapes and write "
                    "OUT/review.gpkg (editable layer objects, layer windows), OUT/windows/*.tif (the image windows), "
                    "OUT/review.json and OUT/README.md; slides also get OUT/objects.qupath.geojson. After editing: "
                    "seamline adapt --from-review OUT.")
    r.add_argument("run", metavar="RUN_DIR/STEM", help="a finished run: the --out folder of seamline segment and the scene's stem")
    r.add_argument("--out", required=True, metavar="REVIEW", help="folder of the package")
    r.add_argument("--windows", type=int, default=30, help="how many windows (default 30)")
    r.add_argument("--window-m", type=float, default=64.0, metavar="M", help="window side in metres, georeferenced scenes (default 64)")
    r.add_argument("--window-px", type=int, default=512, metavar="PX", help="window side in pixels, other images (default 512)")
    r.set_defaults(func=_cmd_review)
