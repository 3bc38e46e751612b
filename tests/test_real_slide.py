"""The shipped nuclei model on a real 40x DAPI whole-slide scan (Hamamatsu NDPI, no ground truth): judged
from the image itself (pipeline.evaluation.sanity).

Before issue #13 nine in ten of its 13,640 objects sat on black background. The scene now runs at the
model's object scale (nuclei ~35 px -> ~18 px: about half the resolution, a quarter of the pixels, which
also keeps this test short), normalised robustly, so:
* at most 10 % of the objects have a mean signal below the slide's Otsu threshold;
* objects per mm² of tissue are those of nuclei (a 8 µm nucleus covers ~50 µm²: packed edge to edge that
  is 20,000 per mm²; sparse tissue has a few hundred);
* areas are in µm², with a median nucleus area in 20–150 µm².
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from helpers import shared

from pipeline.config import SegmentConfig
from pipeline.evaluation.sanity import slide_figures
from pipeline.runner import segment_scene

pytestmark = pytest.mark.slow  # the shipped model on a real slide


def _level0_and_pixel_size(path) -> tuple[np.ndarray, float]:
    """Level-0 signal (max over the RGB render's colours) and µm per pixel from the NDPI's TIFF tags."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        num, den = page.tags["XResolution"].value
        assert page.tags["ResolutionUnit"].value == 3  # centimetre
        return page.asarray().max(axis=-1), 1e4 * den / num


@pytest.fixture(scope="module")
def dapi(tmp_path_factory, dask_client_session):
    slide = shared("slides", "test3-DAPI-2-387.ndpi")
    signal, px = _level0_and_pixel_size(slide)
    out = tmp_path_factory.mktemp("dapi")
    s = segment_scene(str(slide), out, SegmentConfig(model="default", tile=1024), client=dask_client_session)
    g = gpd.read_parquet(s["outputs"]["parquet"])
    return s, g, signal, px


def test_slide_runs_at_the_models_object_scale(dapi):
    s, g, _, px = dapi
    assert px == pytest.approx(0.2282, abs=1e-4)
    assert s["pixel_size_um"][0] == pytest.approx(px * s["source"]["scale"], rel=1e-6)  # read by the reader itself
    sc = s["object_scale"]
    assert sc["source"] == "pixel_size" and sc["scene_object_diameter_px"] == pytest.approx(8.0 / px, rel=1e-3)
    assert 0.45 < sc["factor"] < 0.55  # 17.7 px / 35 px
    assert s["source"]["level0"] == [4864, 3968] and s["source"]["stain"]["index"] == 3  # blue: DAPI as grey
    xmin, ymin, xmax, ymax = g.total_bounds  # polygons in level-0 pixel coordinates, x = column, y = -row
    assert 0 <= xmin and ymax <= 0 and 3000 < xmax <= 3968 and -4864 <= ymin < -4000


def test_nuclei_not_background_and_plausible(dapi):
    s, g, signal, px = dapi
    assert set(g.area_unit) == {"um2"} and s["area_unit"] == "um2"
    fig = slide_figures(signal, g.geometry.to_numpy(), g["area"].to_numpy(), px)
    assert fig["objects"] > 1000, fig
    assert fig["background_share"] <= 0.10, fig
    assert 1000 <= fig["objects_per_mm2_tissue"] <= 20000, fig
    assert 20 <= fig["median_area_um2"] <= 150, fig


def test_in_domain_quality_verdict_is_ok(dapi):
    """A fluorescence slide is the nuclei model's own domain (issue #21): verdict ok, few objects doubtful."""
    s, g, _, _ = dapi
    assert s["quality"]["verdict"] == "ok", s["quality"]
    assert s["stats"]["domain"]["modality"] == "fluorescence" and s["quality"]["signals"]["pixel_unit_match"] == 1
    assert g["doubtful"].mean() < 0.05
