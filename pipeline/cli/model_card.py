"""``seamline model-card CHECKPOINT --data DIR | --config TRAIN.yaml``: record a checkpoint's training domain (the
``domain`` key of its JSON, :mod:`pipeline.training.domain`), the reference of every run's quality verdict.
``seamline train`` records it at the end; run this for an older checkpoint, or again after ``seamline tune``."""

from __future__ import annotations

import argparse

from pipeline.config_file import load_yaml_config
from pipeline.errors import ParameterError
from pipeline.models.registry import resolve_model_spec
from pipeline.training.config import TrainConfig

__all__ = ["add_model_card_command"]


def _cmd_model_card(args: argparse.Namespace) -> int:
    from pipeline.training.domain import write_domain_record  # late: the training stack and torch

    if (args.data is None) == (args.config is None):
        raise ParameterError("seamline model-card: pass the data the checkpoint was trained on, either --data DIR "
                             "(images/ and labels/) or --config TRAINING.yaml")
    data = load_yaml_config(args.config, TrainConfig, {}).data if args.config else args.data
    checkpoint = resolve_model_spec(args.checkpoint)
    if checkpoint == "classical":
        raise ParameterError("seamline model-card: the classical model has no checkpoint to record a domain in; "
                             "pass a checkpoint path or default, buildings, trees")
    r = write_domain_record(checkpoint, data, write=not args.dry_run)
    mods = ", ".join(f"{k} {v['share']:.0%}" for k, v in r["modalities"].items())
    val = r.get("validation") or {}
    print(f"{checkpoint}: {r['images']} training images ({mods}); domain {r['modality']}, pixel {r['pixel'][0]:g} "
          f"{r['pixel'][1]}; {r['objects']['objects']} labelled objects"
          + (f"; validation F1 {val['f1']:.3f}, score p05 {val['score']['p05']:.3f}" if val.get("score") else "")
          + (" (not written)" if args.dry_run else ""))
    return 0


def add_model_card_command(sub) -> None:
    m = sub.add_parser("model-card", help="record a checkpoint's training domain (the reference of the quality verdict)")
    m.add_argument("checkpoint", help="checkpoint path (NAME.safetensors + NAME.json) or default, buildings, trees")
    m.add_argument("--data", metavar="DIR", help="the training folder (images/, labels/) it was trained on")
    m.add_argument("--config", metavar="FILE", help="or the training config it was trained with (any data kind)")
    m.add_argument("--dry-run", action="store_true", help="print the summary; leave the checkpoint's JSON as it is")
    m.set_defaults(func=_cmd_model_card)
