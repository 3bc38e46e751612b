"""Brightfield vs fluorescence on the overview (pipeline/stages/modality.py), on real files opened as the
pipeline opens them: the H&E SVS, the DAPI NDPI, DSB2018 images of every modality, CoNSeP patches."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers import shared

from pipeline.io.sources import open_source
from pipeline.stages.inputs import overview
from pipeline.stages.modality import Modality, detect_modality


def _judge(path) -> Modality:
    with open_source(str(path)) as src:
        ov, mask, _ = overview(src)
        return detect_modality(ov, mask, georeferenced=src.crs_wkt is not None)


def test_real_he_slide_is_brightfield_he():
    m = _judge(shared("slides", "CMU-1-Small-Region.svs"))
    assert (m.modality, m.stain) == ("brightfield", "he") and m.is_he
    assert "bright background" in m.reason and "H&E" in m.reason
    assert m.signals["median_level"] > 0.8 and m.signals["he_share"] > 0.8


def test_real_dapi_slide_is_fluorescence():
    m = _judge(shared("slides", "test3-DAPI-2-387.ndpi"))
    assert m.modality == "fluorescence" and not m.is_he
    assert "dark background" in m.reason and m.signals["median_level"] < 0.2


def test_aerial_scene_is_not_microscopy():
    m = _judge(shared("aerial", "deepforest", "OSBS_029.tif"))
    assert m.modality == "aerial" and not m.is_he


@pytest.mark.parametrize("modality,expected", [("fluor", ("fluorescence", None)), ("he_color", ("brightfield", "he")),
                                               ("bright_gray", ("brightfield", "grey"))])
def test_dsb2018_images_by_manifest(modality, expected):
    """Five images of each kind (all 531 are in docs/bench/modality.json: no error there)."""
    root = shared("dsb2018")
    with (root / "manifest.csv").open() as fh:
        ids = [r["id"] for r in csv.DictReader(fh) if r["modality"] == modality][:5]
    for i in ids:
        m = _judge(root / "images" / f"{i}.png")
        assert (m.modality, m.stain) == expected, (i, m)


def test_consep_patches_are_he():
    root = shared("he_consep", "images", "test")
    found = [_judge(p) for p in sorted(root.glob("test_1_*.jpg"))[:8]]
    assert all(m.is_he for m in found), [m.reason for m in found]


def test_single_channel_and_mask():
    """A grey brightfield image as one band, and a fluorescence one whose invalid (masked) half is white."""
    rng = np.random.default_rng(0)
    bright = np.full((1, 64, 64), 230, np.uint8)
    bright[0, 20:30, 20:30] = 60
    m = detect_modality(bright + rng.integers(0, 5, bright.shape, dtype=np.uint8))
    assert (m.modality, m.stain) == ("brightfield", "grey")
    dark = rng.integers(0, 8, (3, 64, 64)).astype(np.uint16)
    dark[:, 10:20, 10:20] = 4000
    dark[:, :, 32:] = 65535  # outside the valid area: must not count
    mask = np.zeros((64, 64), bool)
    mask[:, :32] = True
    assert detect_modality(dark, mask).modality == "fluorescence"
    assert detect_modality(dark).modality == "brightfield"  # the same pixels unmasked look bright


def test_flat_or_empty_overview_is_unknown():
    assert detect_modality(np.zeros((3, 32, 32), np.uint8)).modality == "unknown"
    assert detect_modality(np.zeros((3, 4, 4), np.uint8)).modality == "unknown"
