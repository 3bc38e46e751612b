"""Shipped configs validate; GeoTIFF + vector training data rasterises on the scene grid."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import deepforest_crowns

from pipeline.config import SegmentConfig
from pipeline.config_file import load_yaml_config
from pipeline.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["microscopy.yaml", "classical.yaml", "satellite.yaml", "buildings.yaml", "trees.yaml"])
def test_segment_configs_validate(name):
    cfg = load_yaml_config(CONFIGS / name, SegmentConfig)
    assert cfg.halo is None or cfg.halo < cfg.tile  # None: the model's receptive field


def test_trees_config_averages_mirror_images_unless_told_not_to():
    """The crown model runs with test-time augmentation by default (it helped on every tree test: docs/MODEL.md);
    --no-tta on the command line wins over the config."""
    from pipeline.cli import build_parser
    from pipeline.cli.options import config_from_args

    p = build_parser()
    assert config_from_args(p.parse_args(["segment", "x.tif", "--out", "o", "--config", "trees"])).tta is True
    assert config_from_args(p.parse_args(["segment", "x.tif", "--out", "o", "--config", "trees", "--no-tta"])).tta is False
    assert config_from_args(p.parse_args(["segment", "x.tif", "--out", "o", "--config", "buildings"])).tta is False


@pytest.mark.parametrize("name", ["train_nuclei.yaml", "train_nuclei_stage2.yaml", "train_nuclei_stage3.yaml", "train_aerial.yaml",
                                  "train_buildings.yaml", "train_buildings_stage2.yaml", "train_trees.yaml"])
def test_train_configs_validate(name):
    assert load_yaml_config(CONFIGS / name, TrainConfig).epochs > 0


def test_geotiff_vector_labels_rasterise_on_grid(tmp_path):
    from pipeline.training.data import load_geotiff_dataset

    tif, crowns = deepforest_crowns()
    vec = tmp_path / "crowns.gpkg"
    crowns.to_crs(4326).to_file(vec)  # other CRS: reprojected back
    (s,) = load_geotiff_dataset([tif], vec)
    assert s.image.shape == (3, 400, 400) and 0 <= s.image.min() and s.image.max() <= 1
    assert len(set(s.labels.ravel().tolist()) - {0}) >= 0.8 * len(crowns)
