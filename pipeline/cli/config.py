"""``seamline config``: the shipped configs (``list``) and the effective configuration of a run (``show``).

``show`` takes the same flags as ``seamline segment`` and prints every setting with where its value comes
from — ``default``, ``file`` (the ``--config`` YAML) or ``flag`` — and, for what the run fills in itself
(the halo from the model's receptive field, the worker count from the cores and the memory), the resolved
value. Paste its output into a YAML file to pin a run's settings.
"""

from __future__ import annotations

import argparse
from importlib import resources
from typing import Any

import yaml

from pipeline.cli.options import add_config_options, config_from_args, overrides_from_args
from pipeline.config import SegmentConfig, result_fields
from pipeline.config_file import shipped_config
from pipeline.settings import resolve_settings

__all__ = ["add_config_command", "shipped_configs", "effective_config", "reference_markdown"]


def shipped_configs() -> dict[str, str]:
    """Name -> first comment line of every config shipped with Seamline (``configs/*.yaml``)."""
    out = {}
    for f in sorted(resources.files("pipeline").joinpath("configs").iterdir(), key=lambda p: p.name):
        if f.name.endswith(".yaml"):
            first = next((ln.lstrip("# ").strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.startswith("#")), "")
            out[f.name[: -len(".yaml")]] = first
    return out


def _file_keys(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    data = yaml.safe_load(shipped_config(path).read_text(encoding="utf-8")) or {}
    return data if isinstance(data, dict) else {}


def effective_config(args: argparse.Namespace) -> list[tuple[str, Any, str]]:
    """``(key, value, source)`` for every top-level setting, resolved as a run resolves it."""
    cfg = config_from_args(args, "seamline config show")
    resolved = resolve_settings(cfg).cfg
    flags = overrides_from_args(args)
    filed = _file_keys(getattr(args, "config", None))
    rows = []
    for key in SegmentConfig.model_fields:
        value = getattr(resolved, key)
        if key in flags:
            source = "flag"
        elif key in filed:
            source = "file"
        elif getattr(cfg, key) != value:
            source = "resolved" + (" (the model's receptive field)" if key == "halo" else
                                   " (cores and memory)" if key == "workers" else "")
        else:
            source = "default"
        dumped = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
        rows.append((key, dumped, source))
    return rows


def _cmd_show(args: argparse.Namespace) -> int:
    results = result_fields()
    print("# seamline config show: the effective settings; '# source' says where each comes from")
    print("# (*: changes results, part of the settings fingerprint)")
    for key, value, source in effective_config(args):
        text = yaml.safe_dump({key: value}, default_flow_style=True, sort_keys=False, width=200).strip()
        text = text[1:-1] if text.startswith("{") else text  # "{tile: 1024}" -> "tile: 1024"
        print(f"{text:<60} # {source}{' *' if key in results else ''}")
    return 0


def _fmt_default(f) -> str:
    if f.is_required():
        return "(required)"
    if f.default_factory is not None:
        v = f.default_factory()
        v = v.model_dump(mode="json") if hasattr(v, "model_dump") else v
    else:
        v = f.default
    return "`" + yaml.safe_dump(v, default_flow_style=True, width=200).strip().removesuffix("...").strip() + "`"


def _type_name(f) -> str:
    t = str(f.annotation).replace("typing.", "").replace("pipeline.config.", "")
    return t.replace("<class '", "").replace("'>", "")


def reference_markdown() -> str:
    """docs/CONFIG.md: every key of :class:`SegmentConfig` and its sections, with default, unit and meaning —
    generated from the code, so it cannot drift (tests/test_config_doc.py checks the file is current)."""
    lines = ["# Configuration reference", "",
             "Generated from `pipeline/config.py` by `seamline config reference > docs/CONFIG.md`; a test fails when "
             "it is out of date. A YAML file (`--config FILE`, or a shipped one by name: `seamline config list`) sets "
             "any of these keys; command-line flags override it; `seamline config show` prints the effective "
             "values with their sources. Unknown keys are errors.", "",
             "**Changes results** (✓): part of the settings fingerprint that keys the work folder, the run summary "
             "and `seamline watch` — changing it makes a scene's outputs stale; the others only change how and "
             "where the work runs.", "",
             "| key | default | unit | changes results | meaning |", "|---|---|---|---|---|"]
    sections = []
    for name, f in SegmentConfig.model_fields.items():
        extra = f.json_schema_extra or {}
        unit = extra.get("unit", "")
        lines.append(f"| `{name}` | {_fmt_default(f)} | {unit} | {'✓' if extra.get('results') else ''} | "
                     f"{(f.description or '').replace('|', '/')} |")
        for t in _section_types(f.annotation):
            sections.append((name, t))
    for name, t in sections:
        kind = t.model_fields.get("kind")
        label = "" if kind is None else f" (kind: {kind.description})"
        lines += ["", f"## `{name}`{label}", "",
                  (t.__doc__ or "").strip().replace("\n    ", " "), "",
                  "| key | default | unit | meaning |", "|---|---|---|---|"]
        for k, sf in t.model_fields.items():
            unit = (sf.json_schema_extra or {}).get("unit", "")
            lines.append(f"| `{name}.{k}` | {_fmt_default(sf)} | {unit} | {(sf.description or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _section_types(annotation) -> list:
    from typing import get_args

    from pydantic import BaseModel

    out = []
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            out.append(t)
    return out


def _cmd_reference(args: argparse.Namespace) -> int:
    print(reference_markdown(), end="")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    for name, first in shipped_configs().items():
        print(f"{name:<28} {first}")
    print("\nuse one with --config NAME (or copy it: seamline config show --config NAME > my.yaml)")
    return 0


def add_config_command(sub) -> None:
    c = sub.add_parser("config", help="the shipped configs, and the effective settings of a run",
                       description=__doc__.splitlines()[0])
    csub = c.add_subparsers(dest="config_command", required=True)
    s = csub.add_parser("show", help="print the effective settings of a run with each value's source")
    add_config_options(s)
    s.set_defaults(func=_cmd_show)
    lst = csub.add_parser("list", help="the configs shipped with Seamline (use one with --config NAME)")
    lst.set_defaults(func=_cmd_list)
    ref = csub.add_parser("reference", help="every config key, default, unit and meaning, as Markdown (docs/CONFIG.md)")
    ref.set_defaults(func=_cmd_reference)
