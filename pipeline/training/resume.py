"""Resumable training: the whole training state after every epoch, safetensors + JSON (never pickle).

``seamline adapt`` runs for minutes on a laptop CPU and may be stopped at any time (a closed lid, Ctrl-C, a
killed job); run again, it continues after the last finished epoch instead of starting over. What has to
come back for that: the network's weights, the optimiser's moments (AdamW restarted from zero moments takes
large steps again), the learning-rate schedule's position, the random generators that draw crops (so a
resumed run draws the crops the uninterrupted one would have), the time already spent (a time-based
schedule spans the budget across interruptions), and the bookkeeping (history, best score so far).

Tensors go to ``STATE.safetensors``, everything else to ``STATE.json``; both are replaced atomically, the
JSON last, so a state is either the previous epoch's or this one's, never half of each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import CheckpointError
from pipeline.models.checkpoint import atomic_write_bytes

__all__ = ["save_state", "load_state", "state_paths"]


def state_paths(out: str | Path) -> tuple[Path, Path]:
    """The two files of the resumable state beside the checkpoint ``out``."""
    return Path(str(out) + ".state.safetensors"), Path(str(out) + ".state.json")


def _jsonable(v: Any) -> bool:
    """Scheduler entries that are plain data (some schedulers also hold functions, rebuilt on construction)."""
    try:
        json.dumps(v)
    except TypeError:
        return False
    return True


def save_state(out: str | Path, net, opt, sched, extra: dict[str, Any]) -> None:
    """Write the state after an epoch: weights, optimiser moments, schedule, and ``extra`` (JSON-able)."""
    import torch
    from safetensors.torch import save as st_save

    weights, meta = state_paths(out)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"net/{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    osd = opt.state_dict()
    for i, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt/{i}/{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().cpu()
    tensors["torch_rng"] = torch.get_rng_state()
    sd = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas" and _jsonable(v)}
    info = {"param_groups": osd["param_groups"], "scheduler": sd, **extra}
    atomic_write_bytes(weights, st_save(tensors))
    atomic_write_bytes(meta, (json.dumps(info) + "\n").encode())


def load_state(out: str | Path, net, opt, sched) -> dict[str, Any] | None:
    """Restore the state written by :func:`save_state` into ``net``, ``opt`` and ``sched``; returns its
    ``extra``, or None when there is none. A state that does not fit the network is one clear error."""
    import torch
    from safetensors.torch import load_file

    weights, meta = state_paths(out)
    if not (weights.is_file() and meta.is_file()):
        return None
    info = json.loads(meta.read_text())
    tensors = load_file(str(weights))
    try:
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net/")})
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: the saved training state does not fit this network ({str(exc).splitlines()[0]}); "
                              f"delete {weights.name} and {meta.name} to start over") from None
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, i, name = k.split("/", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": info.pop("param_groups")})
    sched.load_state_dict({**sched.state_dict(), **info.pop("scheduler")})
    torch.set_rng_state(tensors["torch_rng"])
    return info
