"""Place-based GeoTIFF training data: chips of several zoom levels grouped by place, resampled to one GSD,
and held out place by place (never a building in training at one zoom and in validation at another)."""

from __future__ import annotations

import numpy as np
from helpers import shared

from pipeline.training.places import load_places_dataset, place_of, split_by_place

Z19 = 76.43702828517625  # a web-map zoom-19 tile, in EPSG:3857 metres


def test_kampala_zoom_levels_become_one_sample_per_place_and_zoom():
    chips = shared("aerial", "kampala_buildings", "chips")
    rasters = [str(chips / "OAM-309606-261636-19.tif"), str(chips / "OAM-619212-523272-20.tif"), str(chips / "OAM-1238424-1046544-21.tif")]
    samples = load_places_dataset(rasters, str(shared("aerial", "kampala_buildings", "labels.gpkg")), 0.15, Z19)
    assert len({place_of(s.name) for s in samples}) == 1 and len(samples) == 3
    by_res = {s.name.split("@")[1]: s for s in samples}
    z19, z21 = by_res["0.2986m"], by_res["0.0746m"]
    assert z19.image.shape == (3, 510, 510)  # 256 px at 0.2986 m -> 0.15 m
    assert z21.image.shape == (3, 127, 127)  # 256 px at 0.0746 m
    assert z19.labels.max() > 0
    # z21 chip is the top-left sixteenth of the z19 chip: the same buildings on the same resampled grid
    a, b = z19.labels[:127, :127] > 0, z21.labels > 0
    assert (a == b).mean() > 0.97


def test_split_holds_out_whole_places():
    from pipeline.training.samples import Sample

    samples = [Sample(f"p{p}@{r}m", np.zeros((3, 4, 4), np.float32), np.zeros((4, 4), np.int32)) for p in range(7)
               for r in (0.075, 0.15, 0.3)]
    train, val = split_by_place(samples, 0.3, seed=0)
    assert len(val) == 6 and len(train) == 15
    assert not {place_of(s.name) for s in train} & {place_of(s.name) for s in val}
    assert [s.name for s in split_by_place(samples, 0.3, seed=0)[1]] == [s.name for s in val]
