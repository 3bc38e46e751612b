"""The one option set of the commands that run scenes: ``seamline segment``, ``seamline watch`` and
``python -m flows.segment`` build their flags here, and turn them into a config here, so that a flag means the
same everywhere and none is missing from one of them.

A flag given on the command line overrides the config file (``--config``), which overrides the defaults of
:class:`pipeline.config.SegmentConfig`; ``seamline config show`` prints the result with each value's source.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.config import SegmentConfig
from pipeline.config_file import segment_config
from pipeline.errors import EXIT

__all__ = ["UsageParser", "add_config_options", "add_run_options", "overrides_from_args", "config_from_args", "MODEL_HELP"]

MODEL_HELP = ("'default' (shipped nuclei model for the scene's modality: H&E brightfield -> 'nuclei-he', else 'nuclei', "
              "the fluorescence model), 'classical' (threshold + watershed, no weights), 'buildings' "
              "(shipped building model, aerial 0.15 m), 'trees' (shipped tree-crown model, aerial 0.1 m) or a "
              "checkpoint path (NAME.safetensors + NAME.json)")

#: flag destination -> config key, for the flags that take a value
_VALUED = ("model", "tile", "halo", "workers", "scheduler", "device", "batch_size", "inference")


class UsageParser(argparse.ArgumentParser):
    """argparse with its own exit code for a wrong command line (64, EX_USAGE), so that a script can tell it
    from a bad input (2, one line naming the input): both used to exit 2. Sub-parsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT["usage"], f"{self.prog}: error: {message}\n")


def _default(key: str) -> Any:
    return SegmentConfig.model_fields[key].default


def add_config_options(p: argparse.ArgumentParser) -> None:
    """The flags that make a :class:`SegmentConfig` (``--config`` and the settings' own flags)."""
    p.add_argument("--config", metavar="FILE", help="YAML config (configs/, or `seamline config list`); flags override it")
    p.add_argument("--model", help=f"{MODEL_HELP} (default: {_default('model')})")
    p.add_argument("--tile", type=int, metavar="PX", help=f"tile size in pixels (default {_default('tile')})")
    p.add_argument("--halo", type=int, metavar="PX", help="context around each tile in pixels, < tile (default: the "
                                                          "model's receptive field; 64 for classical)")
    p.add_argument("--workers", type=int, metavar="N", help="LocalCluster worker processes (default: one per core, "
                                                            "as many as the memory holds)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="use an existing Dask scheduler (tcp://host:8786) instead "
                                                          "of a LocalCluster")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help=f"where the model runs (default {_default('device')})")
    p.add_argument("--batch-size", dest="batch_size", type=int, metavar="N",
                   help="windows per forward pass (default: 1 on a CPU, 4 on a GPU)")
    p.add_argument("--inference", choices=["eager", "bf16", "compile", "onnx"],
                   help=f"CPU forward pass of a learned model (default {_default('inference')}; docs/BENCHMARKS.md)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="learned models: average over 4 mirror images (4x slower, a little more accurate; "
                        "on in the trees config, --no-tta turns it off)")
    p.add_argument("--keep-intermediate", dest="keep_intermediate", action="store_true", default=None,
                   help="keep the work folder (zarr store, tile parts) after the run")
    p.add_argument("--no-report", dest="report", action="store_false", default=None,
                   help="skip <stem>.quicklook.png/.tif and <stem>.html (and the batch index.html)")
    p.add_argument("--fail-on", dest="fail_on", choices=["unreliable", "doubtful"],
                   help="publish nothing and exit with code 3 when the run's quality verdict is this (or worse); "
                        "config quality: {fail_on: ...}")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """:func:`add_config_options` and the flags of a run that are not settings."""
    add_config_options(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr (stages, tiles, Mpx/s, ETA)")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given on the command line (flags left out are not overrides)."""
    out = {k: getattr(args, k) for k in _VALUED if getattr(args, k, None) is not None}
    for k in ("tta", "keep_intermediate", "report", "diff"):
        if getattr(args, k, None) is not None:
            out[k] = getattr(args, k)
    if getattr(args, "fail_on", None) is not None:
        out["quality"] = {"fail_on": args.fail_on}
    return out


def config_from_args(args: argparse.Namespace, what: str = "seamline segment") -> SegmentConfig:
    """The config file (``--config``), then the flags given on top."""
    return segment_config(getattr(args, "config", None), overrides_from_args(args), what)
