"""``--model default`` chooses the shipped nuclei model by the scene's modality (issue #20), and every learned
model gets the input its checkpoint names (``"input"``: bands, rgb, hematoxylin) — on real files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from helpers import shared

from pipeline.config import SegmentConfig
from pipeline.models.learned import SHIPPED_MODEL, LearnedModel
from pipeline.models.normalize import apply_normalization
from pipeline.models.registry import SHIPPED_HE, resolve_model_spec
from pipeline.models.stain import fixed_percentiles, model_input
from pipeline.settings import resolve_settings
from pipeline.stages.model_choice import choose_default_model
from pipeline.training.consep import GROUP_NAMES, load_consep


def _dsb(modality: str) -> Path:
    root = shared("dsb2018")
    with open(root / "manifest.csv") as f:
        first = next(r["id"] for r in csv.DictReader(f) if r["modality"] == modality)
    return root / "images" / f"{first}.png"


def test_he_slide_gets_the_he_model_and_says_why():
    c = choose_default_model(str(shared("slides", "CMU-1-Small-Region.svs")), SegmentConfig())
    assert Path(c.model).name == SHIPPED_HE.name
    d = c.as_dict()
    assert d["requested"] == "default" and d["model"] == SHIPPED_HE.name
    assert d["modality"]["stain"] == "he" and "H&E" in d["why"] and "bright background" in d["why"]


@pytest.mark.parametrize("path", [lambda: shared("slides", "test3-DAPI-2-387.ndpi"), lambda: _dsb("fluor")],
                         ids=["dapi_ndpi", "dsb_fluorescence_png"])
def test_fluorescence_gets_the_fluorescence_model(path):
    c = choose_default_model(str(path()), SegmentConfig())
    assert Path(c.model).name == SHIPPED_MODEL.name
    assert c.modality["modality"] == "fluorescence" and "dark background" in c.why


def test_one_channel_scene_is_never_he_and_other_models_run_as_given():
    one = choose_default_model(str(_dsb("he_color")), SegmentConfig(channels=[1]))
    assert Path(one.model).name == SHIPPED_MODEL.name and "not RGB" in one.why
    assert choose_default_model(str(_dsb("he_color")), SegmentConfig(model="nuclei")) is None
    assert choose_default_model(str(_dsb("he_color")), SegmentConfig(model="classical")) is None


def test_default_keeps_one_fingerprint_whichever_model_it_chose():
    """``watch`` resolves the settings before it sees a scene, the run after choosing: they must agree."""
    cfg = SegmentConfig()
    before, he, fl = resolve_settings(cfg), resolve_settings(cfg, str(SHIPPED_HE)), resolve_settings(cfg, str(SHIPPED_MODEL))
    assert before.fingerprint == he.fingerprint == fl.fingerprint
    assert Path(he.model).name == SHIPPED_HE.name and he.metadata["input"] == "hematoxylin"
    explicit = resolve_settings(SegmentConfig(model="nuclei-he"))
    assert explicit.model == he.model and explicit.fingerprint != he.fingerprint


def test_prepare_applies_the_checkpoints_input():
    """The H&E checkpoint's network input is the haematoxylin concentration of the fixed-normalised window
    (one band, repeated to the network's 3), never the RGB; the fluorescence checkpoint gets its bands."""
    patch = load_consep(shared("he_consep"), "test", classes=GROUP_NAMES, limit=1)[0]
    rgb = np.round(patch.raw * 255).astype(np.uint8)
    he = LearnedModel(resolve_model_spec("nuclei-he"), device="cpu", threads=1)
    assert he.input == "hematoxylin"
    norm = apply_normalization(rgb, fixed_percentiles(he.meta, "uint8", 3))
    x = he.prepare(norm)
    h = model_input(norm, "hematoxylin")
    assert h.shape[0] == 1 and x.shape == (3, *rgb.shape[1:])
    np.testing.assert_allclose(x, np.repeat(h, 3, axis=0), atol=1e-6)
    assert not np.allclose(x, norm, atol=0.05)  # not the RGB
    fl = LearnedModel(str(SHIPPED_MODEL), device="cpu", threads=1)
    assert fl.input == "bands"
    np.testing.assert_array_equal(fl.prepare(norm), norm)
