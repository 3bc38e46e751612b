"""The ``seamline`` command line."""

from __future__ import annotations

import argparse
import os
import sys

from pipeline import __version__
from pipeline.cli.config import add_config_command
from pipeline.cli.diff import add_diff_command
from pipeline.cli.evaluate import add_evaluate_command
from pipeline.cli.model_card import add_model_card_command
from pipeline.cli.options import UsageParser
from pipeline.cli.segment import add_segment_commands
from pipeline.cli.watch import add_watch_command
from pipeline.config import SegmentConfig
from pipeline.config_file import load_yaml_config, validation_message
from pipeline.errors import EXIT, ConfigError, ParameterError, SeamlineError
from pipeline.stages.dispatch import slurm_cluster
from pipeline.training.config import TrainConfig

__all__ = ["main"]


def _env_defaults() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _cmd_train(args: argparse.Namespace) -> int:
    from pipeline.training.train import train  # late: torch and the training stack load only for training

    overrides: dict = {}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.out is not None:
        overrides["out"] = args.out
    if args.max_minutes is not None:
        overrides["max_minutes"] = args.max_minutes
    if args.data is not None:
        overrides["data"] = {"kind": "folders", "root": args.data}
    if args.init_from is not None:
        overrides["init_from"] = args.init_from
    if args.config:
        cfg = load_yaml_config(args.config, TrainConfig, overrides)
    else:
        if args.data is None:
            raise SeamlineError("seamline train: pass --config FILE or --data DIR (a folder with images/ and labels/)")
        from pydantic import ValidationError

        try:
            cfg = TrainConfig.model_validate(overrides)
        except ValidationError as exc:
            raise ConfigError(validation_message("seamline train", exc)) from None
    summary = train(cfg)
    print(f"best AP50 {summary['best_ap50']:.3f} at epoch {summary['best_epoch']}; checkpoint {summary['checkpoint']}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from pipeline.training.tune import tune_postprocess  # late: the model stack loads only for tuning

    if (args.data is None) == (args.config is None):
        raise SeamlineError("seamline tune: pass the data the checkpoint was trained on, either --data DIR "
                            "(images/ and labels/) or --config TRAINING.yaml")
    if args.config:
        data = load_yaml_config(args.config, TrainConfig, {}).data
    else:
        data = args.data
    r = tune_postprocess(args.checkpoint, data, write=not args.dry_run)
    before, after = r["before"]["all"]["ap50"], r["after"]["all"]["ap50"]
    print(f"validation AP50 {before:.3f} -> {after:.3f} with {r['postprocess']}" + (" (not written)" if args.dry_run else ""))
    cv = r["cross_validated"]
    print("cross-validated AP50 (chosen on one half, scored on the other): "
          + ", ".join(f"{k} {v['ap50']:.3f}" for k, v in cv.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="seamline", description="Very large images in, one polygon per object out.",
                epilog="exit codes: 0 ok, 1 a run failed, 2 bad input or config (one line), 3 the quality gate "
                       "refused to publish, 64 wrong command line, 130 interrupted (docs/OPERATIONS.md)")
    p.add_argument("--version", action="version", version=f"seamline {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an instance-segmentation model (safetensors + JSON checkpoint)")
    t.add_argument("--config", help="training YAML (see configs/train_nuclei.yaml)")
    t.add_argument("--data", help="folder with images/ and labels/ (instead of a config)")
    t.add_argument("--out", metavar="DIR", help="run folder: DIR/<DIR name>.safetensors + .json (the checkpoint; "
                                                "--model DIR reads it) and .history.json")
    t.add_argument("--epochs", type=int)
    t.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start from these weights instead of random ones ('default': the shipped nuclei model) — "
                        "fine-tuning needs far fewer labels and epochs")
    t.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this wall time")
    t.set_defaults(func=_cmd_train)

    u = sub.add_parser("tune", help="tune a checkpoint's post-processing (thresholds, smallest object) on its validation images")
    u.add_argument("checkpoint")
    u.add_argument("--data", metavar="DIR", help="the training folder (images/, labels/) the checkpoint was trained on")
    u.add_argument("--config", metavar="FILE", help="or the training config it was trained with (any data kind)")
    u.add_argument("--dry-run", action="store_true", help="report only; leave the checkpoint's JSON as it is")
    u.set_defaults(func=_cmd_tune)

    add_segment_commands(sub)
    add_evaluate_command(sub)
    add_config_command(sub)

    v = sub.add_parser("view", help="open a run's image and objects in napari (optional extra: seamline[view])")
    v.add_argument("target", metavar="OUT/STEM", help="the output folder and scene stem of a finished run")
    v.add_argument("--screenshot", metavar="PNG", help="save the canvas to PNG and exit instead of opening a window")
    v.add_argument("--max-polygons", type=int, default=50_000, help="beyond this many objects show centroids")
    v.set_defaults(func=_cmd_view)

    add_watch_command(sub)
    add_diff_command(sub)
    add_model_card_command(sub)

    c = sub.add_parser("cluster-script", help="print the SLURM job script a config's cluster: {kind: slurm} submits (nothing is submitted)")
    c.add_argument("--config", required=True, metavar="FILE", help="YAML config with a cluster: {kind: slurm, ...} section")
    c.set_defaults(func=_cmd_cluster_script)
    return p


def _cmd_cluster_script(args: argparse.Namespace) -> int:

    cfg = load_yaml_config(args.config, SegmentConfig, {})
    if cfg.cluster.kind != "slurm":
        raise ParameterError(f"{args.config}: expected a cluster: {{kind: slurm, ...}} section, found kind "
                             f"{cfg.cluster.kind!r}; see configs/slurm.yaml")
    with slurm_cluster(cfg.cluster, cfg.threads_per_worker) as cluster:
        print(cluster.job_script())
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    from pipeline.report.view import view  # late: napari is an optional extra

    shot = view(args.target, args.screenshot, args.max_polygons)
    if shot:
        print(f"screenshot: {shot}")
    return 0


def _log_to_stderr() -> None:
    """Warnings of the library (logger ``seamline``) as one line each on stderr."""
    import logging

    log = logging.getLogger("seamline")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("seamline: warning: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.WARNING)
        log.propagate = False


def main(argv: list[str] | None = None) -> int:
    _env_defaults()
    _log_to_stderr()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at the interpreter's exit
        return code
    except SeamlineError as exc:
        print(f"seamline: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("seamline: interrupted", file=sys.stderr)
        return EXIT["interrupted"]
    except BrokenPipeError:
        # stdout went to a reader that stopped reading (`seamline segment … | head -1`): what remains to print
        # goes nowhere, without a traceback (Python's documented recipe: point stdout at devnull, so that the
        # interpreter's own flush at exit does not raise again). Outputs were published before anything printed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT["broken_pipe"]  # what a shell reports for a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
