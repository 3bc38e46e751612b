"""The settings of a run, resolved once: the model, the halo, the worker count, and the fingerprint of the
settings that change results.

One owner for "the settings that change results": :func:`resolve_settings` fills in what the user left
unset (the halo from the model's receptive field, the worker count from the cores and the memory), and the
fingerprint is taken of the *resolved* config, over the fields :class:`~pipeline.config.SegmentConfig` marks
``results=True``. The work-folder key, the published summary and ``seamline watch`` all use this one value:
two lists, or one taken before and one after resolution, made ``watch`` redo every scene whose config left the
halo unset (issue #19).

The model enters the fingerprint by its identity (the sha256 of its JSON metadata, which changes whenever the
weights or the post-processing do), never by its path: the same shipped model installed elsewhere is the same
model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from pipeline import __version__
from pipeline.config import SegmentConfig, result_fields
from pipeline.errors import CheckpointError, ParameterError
from pipeline.models.checkpoint import checkpoint_paths, load_metadata
from pipeline.models.registry import DEFAULT, SHIPPED_HE, resolve_model_spec

__all__ = ["Settings", "resolve_settings", "check_model", "resolve_halo", "default_workers", "DEFAULT_HALO"]

DEFAULT_HALO = 64
#: Memory one LocalCluster worker needs at the default tile size (docs/BENCHMARKS.md, "Memory"): what the
#: default worker count is sized by, beside the cores.
WORKER_GIB = {"classical": 1.0, "learned": 2.5}


@dataclass(frozen=True)
class Settings:
    """A config with nothing left to decide: ``cfg.halo`` and ``cfg.workers`` are set."""

    cfg: SegmentConfig
    model: str  # 'classical' or the checkpoint stem path
    metadata: dict | None  # the checkpoint's JSON (None for classical)
    model_id: str  # 'classical' or the checkpoint's name + sha256 of its metadata
    fingerprint: str  # the settings that change results (with the model and the Seamline version)
    warnings: tuple[str, ...] = ()

    @property
    def model_name(self) -> str:
        return Path(self.model).name if self.metadata else self.model


def check_model(spec: str) -> tuple[str, dict | None]:
    """Resolve ``--model`` and, for a checkpoint, read its metadata and the header of its weights here on the
    driver, so that a broken checkpoint fails before any cluster or work folder exists. Returns (model, metadata)."""
    model = resolve_model_spec(spec)
    if model == "classical":
        return model, None
    md = load_metadata(model)
    weights, _ = checkpoint_paths(model)
    try:
        with safe_open(str(weights), framework="numpy") as f:  # reads and checks the header only
            f.keys()
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint weights {weights}: not a readable safetensors file ({exc}); "
                              "re-copy it or re-save it with seamline train") from None
    return model, md


def resolve_halo(cfg: SegmentConfig, model: str, md: dict | None) -> tuple[int, list[str]]:
    """The halo to use, and warnings. Unset, it is the model's receptive field (checkpoint metadata), so a
    tiled run sees the context a whole-image run sees; the classical model needs the size of the largest
    object that must split exactly as in a whole-image run (default 64)."""
    rf = int(md.get("receptive_field_px", DEFAULT_HALO)) if md else None
    name = Path(model).name
    if md:
        # The network downsamples by 2**depth: shifted by anything else, a window sees the image on another
        # pixel grid than a whole-image run does, and its heads change by up to 0.13 (docs/MODEL.md), halo or not.
        stride = 2 ** int(md.get("encoder_depth", 5))
        if cfg.tile % stride:
            lo, hi = cfg.tile // stride * stride, -(-cfg.tile // stride) * stride
            use = f"--tile {lo} or {hi}" if lo > 0 else f"--tile {hi}"
            raise ParameterError(f"--tile {cfg.tile}: model {name} needs tiles that are a multiple of {stride} px (its "
                                 f"downsampling), or tiles see another pixel grid than a whole-image run and objects "
                                 f"at seams change; use {use}")
    if cfg.halo is None:
        halo = rf or DEFAULT_HALO
        if halo >= cfg.tile:
            raise ParameterError(f"--tile ({cfg.tile}) must be larger than the halo ({halo} px, the receptive field of "
                                 f"model {name}); raise the tile size or pass a smaller --halo")
        return halo, []
    if rf and cfg.halo < rf:
        return cfg.halo, [f"--halo {cfg.halo} is below the receptive field of model {name} ({rf} px): objects near "
                          f"tile seams can come out slightly different from a whole-image run; use --halo {rf}"]
    return cfg.halo, []


def _available_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**30


def default_workers(kind: str, cores: int | None = None, available_gib: float | None = None) -> int:
    """LocalCluster workers when the config leaves ``workers`` unset: one per core, but no more than the
    available memory holds at :data:`WORKER_GIB` each (a 16 GB laptop with 8 cores gets fewer learned-model
    workers than cores, instead of running out of memory), and at least one."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    avail = available_gib if available_gib is not None else _available_gib()
    by_memory = int(avail // WORKER_GIB[kind])
    return max(1, min(cores, by_memory))


def model_identity(model: str, md: dict | None) -> str:
    if md is None:
        return model
    _, meta = checkpoint_paths(model)
    return f"{Path(model).name}:{hashlib.sha256(meta.read_bytes()).hexdigest()[:16]}"


def default_identity() -> str:
    """``--model default``'s identity: both shipped nuclei models it chooses between by the scene's modality,
    so that ``watch`` (which resolves before seeing a scene) and the run (after) agree on the fingerprint."""
    return "default:" + "+".join(model_identity(str(p), {"shipped": True}) for p in (resolve_model_spec(DEFAULT), SHIPPED_HE))


def fingerprint(cfg: SegmentConfig, model_id: str) -> str:
    """The fingerprint of a *resolved* config's result-changing fields, the model's identity and the version."""
    relevant = cfg.model_dump(include=result_fields(), exclude={"model"})
    return hashlib.sha256(json.dumps([relevant, model_id, __version__], sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_settings(cfg: SegmentConfig, chosen: str | None = None) -> Settings:
    """Resolve ``cfg`` (cheap: reads the checkpoint's JSON and the header of its weights, never the image).

    ``chosen``: the checkpoint ``--model default`` chose for this scene (:mod:`pipeline.stages.model_choice`);
    the fingerprint stays ``default``'s. Raises :class:`~pipeline.errors.CheckpointError` /
    :class:`~pipeline.errors.ParameterError` for a broken checkpoint or a tile size the model cannot use,
    before any cluster or work folder exists."""
    model, md = check_model(chosen or cfg.model)
    halo, warnings = resolve_halo(cfg, model, md)
    workers = cfg.workers if cfg.workers is not None else default_workers("classical" if md is None else "learned")
    resolved = cfg.model_copy(update={"halo": halo, "workers": workers})
    mid = default_identity() if cfg.model == DEFAULT else model_identity(model, md)
    return Settings(resolved, model, md, mid, fingerprint(resolved, mid), tuple(warnings))
