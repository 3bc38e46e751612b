"""Training writes safetensors + JSON, loading never unpickles, and the learned model runs in the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import CheckpointError
from pipeline.models.checkpoint import checkpoint_paths, load_metadata, save_checkpoint
from pipeline.models.learned import SHIPPED_MODEL, LearnedModel
from pipeline.training.config import TrainConfig
from pipeline.training.data import Augmenter, make_targets, split_train_val

from helpers import shared



def test_targets_separate_touching_objects():
    lab = np.zeros((12, 12), np.int32)
    lab[2:10, 1:6], lab[2:10, 6:11] = 1, 2
    t = make_targets(lab)
    assert t.shape == (3, 12, 12)
    assert t[0].sum() == (lab > 0).sum()
    assert t[1][:, 5:7].sum() > 0  # the contact between the two is boundary
    assert t[2].max() == pytest.approx(1.0) and t[2][lab == 0].max() == 0


def test_augmenter_is_seeded_and_keeps_image_label_aligned():
    lab = np.zeros((80, 90), np.int32)
    lab[10:30, 10:40] = 1
    img = (lab > 0)[None].astype(np.float32).repeat(3, 0)
    from pipeline.training.data import Sample

    s = Sample("x", img, lab)
    a1, a2 = Augmenter(64, seed=1), Augmenter(64, seed=1)
    for _ in range(5):
        (x1, y1), (x2, _) = a1(s), a2(s)
        np.testing.assert_array_equal(x1, x2)
        assert x1.shape == (3, 64, 64) and y1.shape == (3, 64, 64)
        # Bright pixels are the foreground target (geometry transformed together).
        assert ((x1[0] > 0.5) == (y1[0] > 0.5)).mean() > 0.97


def test_split_is_stratified_and_reproducible():
    from pipeline.training.data import Sample

    samples = [Sample(f"{m}{i}", np.zeros((1, 2, 2)), np.zeros((2, 2), np.int32), m) for m in "ab" for i in range(10)]
    t1, v1 = split_train_val(samples, 0.2, seed=0)
    t2, v2 = split_train_val(samples, 0.2, seed=0)
    assert [s.name for s in v1] == [s.name for s in v2]
    assert sorted(s.modality for s in v1) == ["a", "a", "b", "b"]
    assert not {s.name for s in t1} & {s.name for s in v1}


def test_train_tiny_run_writes_loadable_checkpoint(tmp_path):
    cfg = TrainConfig.model_validate({
        "data": {"kind": "folders", "root": str(shared("dsb2018")), "limit": 8},
        "out": str(tmp_path / "m"), "epochs": 1, "batch_size": 2, "crop": 64, "val_fraction": 0.25,
        "classes": ["nucleus"], "threads": 2,
        "model": {"encoder": "resnet18", "decoder_channels": [32, 16, 16, 8, 8]},
    })
    from pipeline.training.train import train

    summary = train(cfg)
    weights, meta = checkpoint_paths(tmp_path / "m")
    assert weights.is_file() and meta.is_file()
    assert weights.read_bytes()[:8] != b"\x80\x04\x95"[:8]  # not a pickle
    md = json.loads(meta.read_text())
    for key in ("architecture", "encoder", "heads", "in_channels", "postprocess", "normalization", "training", "validation", "seamline_version"):
        assert key in md
    assert md["training"]["val_images"] >= 2 and md["training"]["val_images"] + md["training"]["train_images"] == 8
    assert summary["train_images_per_s"] > 0
    model = LearnedModel(tmp_path / "m", device="cpu")
    heads = model.predict_heads(np.random.default_rng(0).random((1, 3, 70, 90), dtype=np.float32))
    assert heads.shape == (1, 3, 70, 90) and 0 <= heads.min() and heads.max() <= 1


def test_shipped_model_is_small_safe_and_documented():
    weights, meta = checkpoint_paths(SHIPPED_MODEL)
    assert weights.stat().st_size <= 25 * 2**20
    md = load_metadata(SHIPPED_MODEL)
    assert md["classes"] == ["nucleus"] and "dsb2018" in md["training"]["data"]
    assert md["validation"]["fluor"]["ap50"] > 0.7


def test_checkpoint_errors_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_metadata(tmp_path / "nope")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="expected JSON"):
        load_metadata(tmp_path / "bad")
    with pytest.raises(CheckpointError, match="lacks"):
        save_checkpoint(tmp_path / "c", {}, {"architecture": "Unet"})
