"""Helpers shared by tests (import as ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def rasterize_output(parquet: str | Path, shape: tuple[int, int], transform) -> np.ndarray:
    """Label image of a Seamline GeoParquet on the input grid (object_id as label)."""
    import geopandas as gpd
    from affine import Affine
    from rasterio.features import rasterize

    from pipeline.io.scene import pixel_grid_transform

    g = gpd.read_parquet(parquet)
    if len(g) == 0:
        return np.zeros(shape, np.int32)
    # rasterio gives an image without georeferencing the identity; Seamline places it at y = -row, as QGIS does
    transform = Affine(*pixel_grid_transform(tuple(transform)[:6], g.crs.to_wkt() if g.crs and g.crs.name != "Image pixel grid" else None))
    return rasterize([(geom, int(i)) for geom, i in zip(g.geometry, g.object_id)], out_shape=shape,
                     transform=transform, dtype="int32")


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(*parts: str) -> Path:
    """A path under ../shared/data (real images with ground truth); fails clearly when it is missing."""
    import pytest

    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"{p} not found: the tests read real data from shared/data beside the checkout (as CI has it)")
    return p


def deepforest_crowns():
    """The DeepForest sample scene OSBS_029.tif and its labelled tree-crown boxes as a GeoDataFrame in the
    scene's CRS: GeoTIFF + vector training data."""
    import geopandas as gpd
    import pandas as pd
    import rasterio
    import shapely

    tif = shared("aerial", "deepforest", "OSBS_029.tif")
    boxes = pd.read_csv(shared("aerial", "deepforest", "OSBS_029.csv"))
    with rasterio.open(tif) as ds:
        t, crs = ds.transform, ds.crs
    polys = [shapely.box(*(t * (r.xmin, r.ymax)), *(t * (r.xmax, r.ymin))) for r in boxes.itertuples()]
    return tif, gpd.GeoDataFrame(geometry=polys, crs=crs)


def write_nuclei_slide(folder: Path) -> tuple[Path, np.ndarray]:
    """The synthetic nuclei slide of the learned-model tests: a 700 × 620 OME-TIFF at 0.5 µm/px with dense,
    touching nuclei, and its truth labels."""
    import rasterio

    from pipeline.synthetic import write_scene

    img, truth = folder / "slide.ome.tif", folder / "truth.tif"
    write_scene(img, 700, 620, crs=None, pixel_size_um=0.5, seed=21, cell=26, radius=(5, 11), fill=0.85,
                labels_path=truth)
    with rasterio.open(truth) as ds:
        return img, ds.read(1)
