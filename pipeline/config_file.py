"""YAML configuration files validated with pydantic: unknown keys are errors, with the fix in the message."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config import SegmentConfig
from pipeline.errors import ConfigError, SeamlineError

__all__ = ["load_yaml_config", "validation_message", "segment_config"]

T = TypeVar("T", bound=BaseModel)


def validation_message(source: str, exc: ValidationError) -> str:
    """One line for the first problem pydantic found, naming the key, what was expected and the fix."""
    err = exc.errors()[0]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, SeamlineError):  # a model validator's own one-line message (e.g. halo >= tile)
        return f"{source}: {cause}"
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown config key '{loc}'; remove it or fix its spelling (see configs/ for valid keys)"
    got = err.get("input")
    got_s = repr(got) if not isinstance(got, dict) else "a mapping"
    return f"{source}: config key '{loc}': {err['msg']} (found {got_s}); fix the value"


SHIPPED = Path(__file__).resolve().parent / "configs"


def shipped_config(path: str | Path) -> Path:
    """``--config``'s file: the path given, else the config of that name shipped with Seamline
    (``--config buildings`` is ``configs/buildings.yaml``; ``seamline config list`` names them)."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.name[: -len(".yaml")] if p.name.endswith(".yaml") else p.name
    shipped = SHIPPED / f"{name}.yaml"
    if p.parent == Path(".") or str(p.parent).rstrip("/") == "configs":
        if shipped.is_file():
            return shipped
    names = ", ".join(sorted(f.stem for f in SHIPPED.glob("*.yaml")))
    raise ConfigError(f"config file {p}: not found; pass an existing YAML file or a shipped config by name ({names})")


def load_yaml_config(path: str | Path, model: type[T], overrides: dict | None = None) -> T:
    p = shipped_config(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p}: not UTF-8 text; save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        first = getattr(exc, "problem", None) or (str(exc).splitlines()[0] if str(exc) else "parse error")
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file {p}: not valid YAML{where} ({first}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping of keys, found {type(data).__name__}")
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(f"config file {p}", exc)) from None


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def segment_config(config: str | Path | None, overrides: dict | None = None, what: str = "seamline segment") -> SegmentConfig:
    """A :class:`~pipeline.config.SegmentConfig` from a YAML file (or none) with ``overrides`` on top: what the
    CLI, the flows and ``watch`` all build their config with."""
    if config:
        return load_yaml_config(config, SegmentConfig, overrides or {})
    try:
        return SegmentConfig.model_validate(overrides or {})
    except ValidationError as exc:
        raise ConfigError(validation_message(what, exc)) from None
