"""Stain handling (pipeline/models/stain.py): colour deconvolution round trip, the stain jitter's invariants,
the model inputs and their fixed normalisation, on a real CoNSeP patch."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import shared
from PIL import Image

from pipeline.errors import CheckpointError, InputError
from pipeline.models.stain import (
    H_SCALE,
    fixed_percentiles,
    from_stains,
    hed_jitter,
    input_kind,
    model_input,
    optical_density,
    to_stains,
)
from pipeline.training.consep import GROUP_NAMES, brightfield_input, load_consep, split_by_tile, tile_of


def _patch() -> np.ndarray:
    p = shared("he_consep", "images", "train", "train_1_000.jpg")
    return np.moveaxis(np.asarray(Image.open(p)), -1, 0).astype(np.float32) / 255


def test_deconvolution_round_trip_on_a_real_patch():
    rgb = np.clip(_patch(), 1 / 255, 1)
    back = from_stains(to_stains(rgb))
    assert np.abs(back - rgb).max() < 1e-4
    assert optical_density(np.ones((3, 2, 2), np.float32)).max() == 0  # white glass absorbs nothing


def test_haematoxylin_is_high_on_nuclei_and_low_on_glass():
    rgb = _patch()
    lab = np.asarray(__import__("tifffile").imread(shared("he_consep", "labels", "train", "train_1_000.tif")))
    h = model_input(rgb, "hematoxylin")[0]
    assert h.shape == rgb.shape[1:] and 0 <= h.min() and h.max() <= 1
    assert np.median(h[lab > 0]) > 2 * np.median(h[lab == 0])
    white = np.ones((3, 8, 8), np.float32)
    assert model_input(white, "hematoxylin").max() == 0


def test_hed_jitter_moves_colour_along_the_stains_only():
    rgb = np.clip(_patch(), 1 / 255, 1)
    rng = np.random.default_rng(0)
    same = hed_jitter(rgb, rng, alpha=(1.0, 1.0), beta=(0.0, 0.0))
    assert np.abs(same - rgb).max() < 1e-4  # the identity jitter changes nothing
    out = hed_jitter(rgb, np.random.default_rng(1), alpha=(0.7, 1.3), beta=(-0.05, 0.05))
    assert out.shape == rgb.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert np.abs(out - rgb).mean() > 0.005
    # scaling every stain by 1.3 scales every concentration by 1.3 (where nothing is clipped: inside the
    # stains' cone and away from black)
    s = to_stains(rgb)
    s2 = to_stains(hed_jitter(rgb, np.random.default_rng(2), alpha=(1.3, 1.3), beta=(0.0, 0.0)))
    inside = (s >= 0).all(axis=0) & (rgb > 0.05).all(axis=0)
    assert inside.mean() > 0.3
    assert np.allclose(s2[:, inside], 1.3 * s[:, inside], atol=2e-3)


def test_model_inputs_and_their_normalisation():
    rgb = _patch()
    assert model_input(rgb, "rgb") is rgb and model_input(rgb, "bands") is rgb
    assert brightfield_input(rgb, "hematoxylin", 3).shape == (3, 256, 256)  # one band repeated for 3 input channels
    b = brightfield_input(rgb, "bands", 3)
    assert b.min() == 0 and b.max() == 1  # percentiles over the image, as the pipeline over a scene
    assert input_kind({}) == "bands" and input_kind({"input": "hematoxylin"}) == "hematoxylin"
    with pytest.raises(CheckpointError, match="expected one of bands, rgb, hematoxylin"):
        input_kind({"input": "lab"})
    with pytest.raises(InputError, match="needs an RGB image"):
        model_input(rgb[:1], "hematoxylin")
    fixed = {"normalization": {"method": "fixed", "white": 255.0}}
    assert fixed_percentiles(fixed, np.uint8, 3) == [(0.0, 255.0)] * 3
    assert fixed_percentiles({"normalization": {"method": "fixed"}}, np.uint16, 3) == [(0.0, 65535.0)] * 3
    assert fixed_percentiles({"normalization": {"method": "percentile"}}, np.uint8, 3) is None
    assert H_SCALE > 1


def test_consep_loader_splits_by_tile_and_groups_types():
    samples = load_consep(shared("he_consep"), "test", classes=GROUP_NAMES, limit=40)
    assert {s.modality for s in samples} == {"he"} and samples[0].raw.shape == (3, 256, 256)
    s = samples[0]
    ids = np.unique(s.labels)[1:]
    assert (s.instance_classes[ids] >= 0).all() and s.instance_classes[0] == -1
    # the copy holds HoVer-Net's four grouped types (1-4): every group has nuclei, spindle-shaped included
    seen = np.bincount(np.concatenate([x.instance_classes[x.instance_classes >= 0] for x in samples]), minlength=4)
    assert (seen > 0).all(), dict(zip(GROUP_NAMES, seen.tolist()))
    train, val = split_by_tile(samples, 0.34, seed=0)
    assert train and val and not ({tile_of(x.name) for x in train} & {tile_of(x.name) for x in val})
