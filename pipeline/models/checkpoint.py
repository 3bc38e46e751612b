"""Checkpoints: safetensors weights plus a JSON metadata sidecar.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` and ``NAME.json``. Loading reads tensors with
``safetensors`` and metadata with ``json``: nothing is ever unpickled, so a checkpoint from an untrusted
source cannot run code. The metadata carries everything needed to rebuild the network (architecture,
encoder, heads, input bands, normalisation) and to judge it (training data, validation metrics).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pipeline.errors import CheckpointError

__all__ = ["checkpoint_paths", "save_checkpoint", "load_metadata", "load_state_dict", "FORMAT_VERSION"]

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "architecture", "encoder", "in_channels", "heads", "postprocess")


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Return ``(weights, metadata)`` paths for a checkpoint given by either file, by its stem, or by the
    training run folder that holds it (``seamline train --out DIR`` writes ``DIR/<DIR name>.safetensors``)."""
    p = Path(path)
    if p.is_dir():
        named = p / f"{p.name}.safetensors"
        found = sorted(p.glob("*.safetensors"))
        p = named if named.is_file() or len(found) != 1 else found[0]
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike[str], state_dict: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write weights and metadata atomically; returns the weights path."""
    from safetensors.torch import save as st_save

    weights, meta = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    md = {"format_version": FORMAT_VERSION, **metadata}
    missing = [k for k in REQUIRED_KEYS if k not in md]
    if missing:
        raise CheckpointError(f"checkpoint metadata lacks {missing}; pass them to save_checkpoint")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    _atomic_write_bytes(weights, st_save(tensors, metadata={"seamline_format": str(FORMAT_VERSION)}))
    _atomic_write_bytes(meta, (json.dumps(md, indent=2, sort_keys=True) + "\n").encode())
    return weights


def load_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate the JSON metadata of a checkpoint."""
    weights, meta = checkpoint_paths(path)
    if not meta.is_file():
        raise CheckpointError(
            f"checkpoint metadata {meta}: file not found; a checkpoint is NAME.safetensors plus NAME.json — "
            "pass the path of one of them"
        )
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights {weights}: file not found beside {meta.name}; copy both files")
    try:
        md = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint metadata {meta}: expected JSON, found invalid text ({exc})") from None
    if not isinstance(md, dict):
        raise CheckpointError(f"checkpoint metadata {meta}: expected a JSON object, found {type(md).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in md]
    if missing:
        raise CheckpointError(f"checkpoint metadata {meta}: missing keys {missing}; re-save it with seamline train")
    if md["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {meta}: format_version {md['format_version']} is newer than this Seamline "
            f"({FORMAT_VERSION}); upgrade seamline"
        )
    return md


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load tensors with safetensors (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, _ = checkpoint_paths(path)
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint weights {weights}: not a readable safetensors file ({exc})") from None
