"""Resumable training (``seamline adapt``, #22): the state saved after an epoch brings back the weights, the
optimiser's moments, the schedule's position and the random generators, through safetensors + JSON only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import CheckpointError
from pipeline.training.resume import load_state, save_state, state_paths


def _setup(seed: int):
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    return net, opt, sched


def _step(net, opt, sched):
    import torch

    loss = net(torch.rand(2, 3, 8, 8)).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_state_round_trip(tmp_path):
    import torch

    net, opt, sched = _setup(0)
    for _ in range(3):
        _step(net, opt, sched)
    rng = np.random.default_rng(5)
    rng.random(7)
    save_state(tmp_path / "m", net, opt, sched, {"epoch": 3, "rng": rng.bit_generator.state})
    weights, meta = state_paths(tmp_path / "m")
    assert weights.suffix == ".safetensors" and json.loads(meta.read_text())["epoch"] == 3
    at_save = torch.get_rng_state()
    # continuing the original and the restored copy gives the same weights: moments and lr came back
    net2, opt2, sched2 = _setup(1)  # reseeds torch's generator
    info = load_state(tmp_path / "m", net2, opt2, sched2)
    assert torch.equal(torch.get_rng_state(), at_save)  # the crops' torch draws continue where they were
    rng2 = np.random.default_rng(0)
    rng2.bit_generator.state = info["rng"]
    assert rng2.random() == rng.random()
    assert sched2.last_epoch == 3 and opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    _step(net, opt, sched)
    torch.set_rng_state(at_save)  # the same input for the copy
    _step(net2, opt2, sched2)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)


def test_no_state_and_wrong_state(tmp_path):
    import torch

    net, opt, sched = _setup(0)
    assert load_state(tmp_path / "none", net, opt, sched) is None
    save_state(tmp_path / "m", net, opt, sched, {})
    other = torch.nn.Conv2d(3, 2, 1)
    o2 = torch.optim.AdamW(other.parameters())
    with pytest.raises(CheckpointError, match="does not fit this network"):
        load_state(tmp_path / "m", other, o2, torch.optim.lr_scheduler.LambdaLR(o2, lambda s: 1.0))
