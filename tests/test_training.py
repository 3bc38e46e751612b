"""Training writes safetensors + JSON, loading never unpickles, and the learned model runs in the pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import deepforest_crowns, shared

from pipeline.errors import CheckpointError
from pipeline.models.checkpoint import checkpoint_paths, load_metadata, save_checkpoint
from pipeline.models.learned import SHIPPED_MODEL, LearnedModel
from pipeline.training.config import TrainConfig
from pipeline.training.data import Augmenter, contact_weights, make_targets, split_train_val

pytestmark = pytest.mark.slow  # training runs


def test_targets_separate_touching_objects():
    lab = np.zeros((12, 12), np.int32)
    lab[2:10, 1:6], lab[2:10, 6:11] = 1, 2
    t = make_targets(lab)
    assert t.shape == (3, 12, 12)
    assert t[0].sum() == (lab > 0).sum()
    assert t[1][:, 5:7].sum() > 0  # the contact between the two is boundary
    assert t[2].max() == pytest.approx(1.0) and t[2][lab == 0].max() == 0


def test_contact_weights_stress_the_band_between_neighbours_only():
    lab = np.zeros((20, 30), np.int32)
    lab[5:15, 2:10] = 1
    lab[5:15, 11:19] = 2  # one background column between 1 and 2
    lab[5:15, 25:29] = 3  # far from both
    w = contact_weights(lab, 5.0, width=2)
    assert w.dtype == np.float32 and w.min() == 1.0 and w.max() == 6.0
    assert (w[5:15, 10] == 6).all()  # the gap between 1 and 2
    assert (w[5:15, 9:12] == 6).all()  # pixels within 2 px of both objects
    assert (w[5:15, 2:9] == 1).all() and (w[5:15, 12:19] == 1).all()  # the rest of each object
    assert (w[:, 21:] == 1).all()  # an isolated object gets no extra weight
    np.testing.assert_array_equal(contact_weights(lab, 0.0), np.ones_like(w))


def test_augmenter_is_seeded_and_keeps_image_label_aligned():
    lab = np.zeros((80, 90), np.int32)
    lab[10:30, 10:40] = 1
    img = (lab > 0)[None].astype(np.float32).repeat(3, 0)
    from pipeline.training.samples import Sample

    s = Sample("x", img, lab)
    a1, a2 = Augmenter(64, seed=1, contact_weight=3.0), Augmenter(64, seed=1, contact_weight=3.0)
    for _ in range(5):
        (x1, y1, w1), (x2, _, _) = a1(s), a2(s)
        np.testing.assert_array_equal(x1, x2)
        assert x1.shape == (3, 64, 64) and y1.shape == (3, 64, 64) and w1.shape == (64, 64)
        assert (w1 == 1).all()  # a single object: no contacts
        # Bright pixels are the foreground target (geometry transformed together).
        assert ((x1[0] > 0.5) == (y1[0] > 0.5)).mean() > 0.97


def test_split_is_stratified_and_reproducible():
    from pipeline.training.samples import Sample

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


def test_time_schedule_anneals_when_the_epochs_run_out_first(tmp_path):
    """schedule: time spans max_minutes, but on a fast machine the epochs may end first: the cycle must still
    reach its low end then (it stopped half-way before, at whatever learning rate the clock had reached)."""
    cfg = TrainConfig.model_validate({
        "data": {"kind": "folders", "root": str(shared("dsb2018")), "limit": 4},
        "out": str(tmp_path / "m"), "epochs": 3, "batch_size": 2, "crop": 64, "val_fraction": 0, "lr": 1e-3,
        "schedule": "time", "max_minutes": 600, "threads": 2,
        "model": {"encoder": "resnet18", "decoder_channels": [32, 16, 16, 8, 8]},
    })
    from pipeline.training.train import train

    train(cfg)
    lrs = [h["lr"] for h in json.loads((tmp_path / "m" / "m.history.json").read_text())["history"]]
    assert len(lrs) == 3 and lrs[0] > 0.5e-3 and lrs[-1] <= 0.03e-3


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


def test_fine_tune_from_the_shipped_model_keeps_its_architecture(tmp_path):
    cfg = TrainConfig.model_validate({
        "data": {"kind": "folders", "root": str(shared("dsb2018")), "limit": 6},
        "out": str(tmp_path / "ft"), "epochs": 1, "batch_size": 2, "crop": 64, "val_fraction": 0.34,
        "classes": ["nucleus"], "threads": 2, "init_from": "default",
        "model": {"encoder": "resnet18"},  # ignored: fine-tuning keeps the starting checkpoint's network
    })
    from pipeline.training.train import train

    train(cfg)
    md = load_metadata(tmp_path / "ft")
    shipped = load_metadata(SHIPPED_MODEL)
    for key in ("architecture", "encoder", "decoder_channels", "in_channels", "heads"):
        assert md[key] == shipped[key]
    assert md["training"]["init_from"] == "default" and md["training"]["contact_weight"] == 5.0
    LearnedModel(tmp_path / "ft", device="cpu")  # the weights fit the architecture in the metadata


@pytest.mark.parametrize("args, words", [
    (["--data", "/nonexistent/labels"], ["training data /nonexistent/labels", "folder not found", "images and"]),
    (["--data", "{root}", "--init-from", "/nope/ckpt", "--epochs", "1"], ["init_from /nope/ckpt", "no checkpoint there"]),
    ([], ["pass --config FILE or --data DIR"]),
])
def test_train_bad_input_is_one_line(args, words, tmp_path):
    import subprocess
    import sys

    root = str(shared("dsb2018"))
    cmd = [sys.executable, "-m", "pipeline.cli", "train", *[a.format(root=root) for a in args], "--out", str(tmp_path / "m")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("seamline: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not list(tmp_path.iterdir())


def test_tta_heads_are_mirror_equivariant():
    """Averaging over the mirror group makes the heads of a mirrored image the mirrored heads (exactly, up to
    float rounding); a single forward pass is not."""
    x = np.random.default_rng(3).random((1, 3, 64, 96), dtype=np.float32)
    tta = LearnedModel(SHIPPED_MODEL, device="cpu", tta=True)
    a = tta.predict_heads(x)
    b = tta.predict_heads(np.ascontiguousarray(x[:, :, :, ::-1]))[:, :, :, ::-1]
    assert a.shape == (1, 3, 64, 96) and 0 <= a.min() and a.max() <= 1
    np.testing.assert_allclose(a, b, atol=1e-5)
    plain = LearnedModel(SHIPPED_MODEL, device="cpu")
    p = plain.predict_heads(x)
    q = plain.predict_heads(np.ascontiguousarray(x[:, :, :, ::-1]))[:, :, :, ::-1]
    assert np.abs(p - q).max() > 1e-3


def _heads_with_fragments(seed: int):
    """Four 8x8 objects (fg, distance peak, no boundary) and two 3x3 foreground fragments without a core."""
    from pipeline.training.samples import Sample

    rng = np.random.default_rng(seed)
    labels = np.zeros((64, 64), np.int32)
    heads = np.zeros((3, 64, 64), np.float32)
    for k, (r, c) in enumerate([(4, 4), (4, 40), (40, 4), (40, 40)], start=1):
        r, c = r + int(rng.integers(0, 8)), c + int(rng.integers(0, 8))
        labels[r:r + 8, c:c + 8] = k
        heads[0, r:r + 8, c:c + 8] = 0.9
        heads[2, r + 2:r + 6, c + 2:c + 6] = 0.8
    for r, c in [(26, 10), (26, 50)]:
        heads[0, r:r + 3, c:c + 3] = 0.9  # a fragment: foreground, no marker -> an object of its own, 9 px
    image = np.zeros((3, 64, 64), np.float32)
    return heads, Sample(f"s{seed}", image, labels, "fluor" if seed % 2 else "other")


def test_tuner_drops_fragments_never_worsens_and_cross_validates():
    from pipeline.training.tune import GRID, SIZE_GRID, Scorer

    pairs = [_heads_with_fragments(seed) for seed in range(4)]
    scorer = Scorer([h for h, _ in pairs], [s for _, s in pairs])
    base = {"fg_threshold": 0.5, "marker_threshold": 0.5, "boundary_threshold": 0.5, "min_area": 8,
            "min_marker_area": 4}
    before = scorer.score(base)
    assert (before["all"]["tp"], before["all"]["fp"], before["all"]["fn"]) == (16, 8, 0)  # AP 16/24
    best = scorer.best(base, [GRID, SIZE_GRID])
    assert best["min_area"] in (16, 24, 32) and scorer.score(best)["all"]["ap50"] == 1.0
    # both halves find the same cure, so the held-out estimate is perfect too
    cv = scorer.cross_validated(base, [GRID, SIZE_GRID])
    assert cv["all"]["ap50"] == 1.0 and cv["all"]["images"] == 4 and cv["fluor"]["images"] == 2
    # a setting that cannot be improved is kept as it is (the checkpoint's own setting is a candidate)
    assert scorer.best(best, [GRID, SIZE_GRID]) == best


def test_tune_a_geotiff_trained_checkpoint_from_its_training_config(tmp_path):
    """`seamline tune --config` finds the validation scenes of any data kind; a dry run leaves the JSON alone."""
    import shutil
    import subprocess
    import sys

    import yaml

    from pipeline.training.train import train

    tif, crowns = deepforest_crowns()
    crowns.to_file(tmp_path / "crowns.gpkg")
    rasters = []
    for k in range(4):
        rasters.append(str(tmp_path / f"scene{k}.tif"))
        shutil.copy(tif, rasters[-1])
    doc = {"data": {"kind": "geotiff", "rasters": rasters, "vectors": str(tmp_path / "crowns.gpkg")},
           "out": str(tmp_path / "crowns"), "epochs": 1, "batch_size": 2, "crop": 64, "val_fraction": 0.5,
           "classes": ["tree"], "threads": 2}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(doc))
    train(TrainConfig.model_validate(doc))
    _, meta = checkpoint_paths(tmp_path / "crowns")
    before = meta.read_text()
    cli = [sys.executable, "-m", "pipeline.cli", "tune", str(tmp_path / "crowns")]
    r = subprocess.run([*cli, "--config", str(tmp_path / "train.yaml"), "--dry-run"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "validation AP50" in r.stdout and "cross-validated AP50" in r.stdout and "geotiff" in r.stdout
    assert meta.read_text() == before
    # written: the training-domain record is made again under the tuned post-processing, so the validation F1 it
    # records is the checkpoint's own (the quality verdict compares runs with that record)
    r = subprocess.run([*cli, "--config", str(tmp_path / "train.yaml")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    md = json.loads(meta.read_text())
    assert md["domain"]["validation"]["f1"] == pytest.approx(md["validation"]["all"]["f1"], abs=0.01)
    # the wrong data, or none: one line naming what to pass
    for extra, words in ([], "either --data DIR"), (["--data", str(shared("dsb2018"))], "none of the checkpoint's 2"):
        r = subprocess.run([*cli, *extra], capture_output=True, text=True, timeout=600)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr
