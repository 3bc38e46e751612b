"""The output table's schema: what every object row carries, in order, and the batch the writers take.

One owner for the column names, so the assembly (:mod:`pipeline.stages.assemble`), the writers
(:mod:`pipeline.io.outputs`, :mod:`pipeline.io.qupath`) and the readers of the outputs agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pipeline.io.scene import SceneInfo

__all__ = ["OUTPUT_COLUMNS", "SHAPE_COLUMNS", "STAT_NAMES", "ROW_GROUP", "ObjectBatch", "channel_names",
           "channel_columns", "measurement_names"]

#: Rows per GeoParquet row group and per batch of objects (readers scan 50k-150k rows per row group well).
ROW_GROUP = 100_000
#: ``doubtful``: the object lies far outside the model's training size range or scores below its validation
#: 1st percentile (pipeline/stages/quality.py); always false for the classical model.
OUTPUT_COLUMNS = ["object_id", "class", "score", "doubtful", "area_px", "area", "area_unit", "perimeter",
                  "perimeter_unit", "centroid_x", "centroid_y", "tile"]
STAT_NAMES = ["mean", "median", "std", "min", "max", "integrated"]
SHAPE_COLUMNS = ["major_axis", "minor_axis", "eccentricity", "orientation", "solidity", "circularity"]


@dataclass
class ObjectBatch:
    """Whole objects ready to write: ``rows`` (every output column but the geometry), ``geometry`` in the
    scene's coordinates (its CRS, or level-0 pixels), ``geoms_px`` in working pixels."""

    rows: dict[str, np.ndarray]
    geometry: np.ndarray
    geoms_px: np.ndarray


def channel_names(info: SceneInfo) -> list[str]:
    """The scene's channel names: the reader's when it gives them, else ``ch1``, ``ch2``, ..."""
    names = getattr(info, "channel_names", None)
    if names and len(names) == info.count:
        return list(names)
    return [f"ch{i + 1}" for i in range(info.count)]


def channel_columns(names: list[str]) -> list[str]:
    """Lowercase column-name stems for channels (GeoPackage wants lowercase): 'DAPI' -> 'dapi'."""
    out = []
    for i, nm in enumerate(names):
        s = re.sub(r"[^0-9a-z]+", "_", str(nm).lower()).strip("_") or f"ch{i + 1}"
        if s[0].isdigit():
            s = f"ch{s}"
        while s in out:
            s = f"{s}_{i + 1}"
        out.append(s)
    return out


def measurement_names(channels: list[str]) -> list[str]:
    """Output column names, in order: shape features, then per channel ``<channel>_<stat>``."""
    return [*SHAPE_COLUMNS, *[f"{c}_{s}" for c in channel_columns(channels) for s in STAT_NAMES]]
