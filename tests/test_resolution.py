"""The resolution rule (pipeline.stages.resolution): level choice, resampling factor, warnings, and area
averaging that gives the same working pixels whatever the block it is computed in."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ParameterError
from pipeline.io.readers.base import Level
from pipeline.stages.resolution import area_resample, choose_resolution, model_pixel_size, source_window, working_shape

NDPI = [Level(4864 // d, 3968 // d, float(d)) for d in (1, 2, 4, 8, 16)]


def test_level_just_finer_than_needed_and_remaining_factor():
    # 0.228 µm/px slide, model trained at 1.0 µm/px: scale 4.38 -> level 2 (4x), then 1.096x by area averaging
    r = choose_resolution(NDPI, (0.228, 0.228), "um", (1.0, "um"))
    assert (r.level, r.warnings) == (2, ())
    # the scale is kept to 4 significant digits: 4.386, not 4.38596...
    assert r.resample == pytest.approx(1.0 / 0.228 / 4, rel=2e-4) and r.scale == pytest.approx(1.0 / 0.228, rel=2e-4)
    # metres and micrometres are one rule
    assert choose_resolution(NDPI, (0.228, 0.228), "um", (1e-6, "m")).scale == pytest.approx(r.scale)
    # within 1 % of a level: that level as stored
    r = choose_resolution(NDPI, (0.25, 0.25), "um", (1.0, "um"))
    assert (r.level, r.resample, r.scale) == (2, 1.0, 4.0)
    # aerial: 0.075 m chips, model at 0.3 m: 4x with no pyramid -> level 0, resample 4
    r = choose_resolution([Level(256, 256, 1.0)], (0.075, 0.075), "m", (0.3, "m"))
    assert (r.level, r.resample) == (0, pytest.approx(4.0))


def test_unknown_pixel_size_and_coarser_image_run_native_with_a_warning():
    r = choose_resolution(NDPI, None, None, (1.0, "um"), model_name="nuclei")
    assert (r.level, r.resample, r.scale) == (0, 1.0, 1.0)
    assert "pixel size is unknown" in r.warnings[0] and "nuclei" in r.warnings[0]
    assert "set pixel_size_um" in r.warnings[0]
    r = choose_resolution([Level(400, 400, 1.0)], None, None, (0.1, "m"), model_name="trees")  # a NEON PNG tile
    assert r.scale == 1.0 and "gdal_translate -a_srs" in r.warnings[0] and "pixel_size_um" not in r.warnings[0]
    r = choose_resolution(NDPI, (2.0, 2.0), "um", (0.5, "um"))
    assert r.scale == 1.0 and "coarser" in r.warnings[0]
    assert choose_resolution(NDPI, (0.2, 0.2), "um", None) == choose_resolution(NDPI, None, None, None)


def test_forced_level_extra_scale_hook_and_model_metadata():
    assert choose_resolution(NDPI, (0.228, 0.228), "um", (1.0, "um"), level=1).scale == 2.0
    with pytest.raises(ParameterError, match=r"resolution.level: 7 does not exist, the image has levels 0..4"):
        choose_resolution(NDPI, None, None, None, level=7)
    # the object-size hook multiplies the pixel-size rule
    r = choose_resolution(NDPI, (0.25, 0.25), "um", (0.5, "um"), extra_scale=3.0)
    assert (r.level, r.resample) == (2, pytest.approx(1.5))
    assert model_pixel_size({"pixel_size": [0.3, "m"]}) == (0.3, "m")
    assert model_pixel_size({"pixel_size": [0.3, "m"]}, [1.0, "um"]) == (1.0, "um")
    assert model_pixel_size({}) is None and model_pixel_size(None) is None


@pytest.mark.parametrize("factor", [2.0, 1.5, 2.37])
def test_area_resample_is_exact_area_average_and_block_independent(factor):
    rng = np.random.default_rng(1)
    lv = Level(203, 157, 1.0)
    img = rng.integers(0, 4000, (2, lv.height, lv.width)).astype(np.uint16)
    h, w = working_shape(lv, factor)
    whole = area_resample(img, factor, 0, 0, h, w, lv)
    assert whole.shape == (2, h, w) and whole.dtype == np.uint16
    # blocks of any size give the same pixels (tiled == untiled depends on it)
    for bs in (16, 37):
        out = np.zeros_like(whole)
        for r in range(0, h, bs):
            for c in range(0, w, bs):
                hh, ww = min(bs, h - r), min(bs, w - c)
                r0, c0, sh, sw = source_window(lv, factor, r, c, hh, ww)
                out[:, r : r + hh, c : c + ww] = area_resample(img[:, r0 : r0 + sh, c0 : c0 + sw], factor, r, c, hh, ww, lv)
        assert np.array_equal(out, whole)
    # the mean is kept (area averaging), and an integer factor is a plain block mean
    assert abs(whole.astype(float).mean() - img.astype(float).mean()) < 15
    if factor == 2.0:
        ref = img[:, :202, :156].astype(float).reshape(2, 101, 2, 78, 2).mean(axis=(2, 4))
        assert np.array_equal(whole[:, :101, :78], np.rint(ref).astype(np.uint16))


def test_plan_input_warns_when_a_learned_model_has_no_pixel_size(tmp_path):
    from helpers import shared

    from pipeline.config import SegmentConfig
    from pipeline.stages.inputs import plan_input

    ndpi = str(shared("slides", "test3-DAPI-2-387.ndpi"))
    p = plan_input(ndpi, SegmentConfig(), {"in_channels": 3}, "nuclei")
    assert (p.info.level, p.info.scale) == (0, 1.0) and any("no pixel_size" in w for w in p.warnings)
    assert p.info.channel_names == ("blue",) and p.stain["detected"]  # R = G = 0: one grey channel
    # a model that states its objects' size instead is scaled by the object-diameter route: no such warning
    p = plan_input(ndpi, SegmentConfig(), {"in_channels": 3, "object_diameter_px": 17.7}, "nuclei")
    assert not any("no pixel_size" in w for w in p.warnings)
    p = plan_input(ndpi, SegmentConfig(), {"in_channels": 3, "pixel_size": [0.9, "um"]}, "nuclei")
    # scale 3.94: level 1 (2x) is the one just finer; level 2 (4x) would be coarser than the model wants
    assert p.info.level == 1 and p.info.resample == pytest.approx(0.9 / 0.22817 / 2, rel=1e-3)
    # the scale is kept to 4 significant digits (a UTM scene and its EPSG:4326 copy resample alike)
    assert p.info.pixel_size_um == pytest.approx((0.9, 0.9), rel=2e-4) and not p.warnings[1:]
    assert p.info.transform[0] == pytest.approx(0.9 / 0.22817, rel=1e-3)  # level-0 pixels per working pixel
