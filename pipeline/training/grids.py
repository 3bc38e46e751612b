"""Post-processing threshold grids: ``seamline tune`` (wide) and training validation (narrow)."""

from __future__ import annotations

__all__ = ["GRID", "SIZE_GRID", "VALIDATION_GRID"]

GRID = {
    "fg_threshold": [0.4, 0.5, 0.6],
    "marker_threshold": [0.25, 0.35, 0.45, 0.55],
    "boundary_threshold": [0.25, 0.35, 0.5, 0.7],
}

#: ``seamline tune``'s second step, at the best thresholds: the smallest object and object core kept. Most
#: false positives of a DSB2018 model are fragments of a few pixels (24 px for the shipped model: fluorescence
#: AP@0.5 +0.017, cross-validated; docs/MODEL.md).
SIZE_GRID = {
    "min_area": [8, 16, 24, 32],
    "min_marker_area": [4, 8, 16],
}

#: What training validation tries every time it validates (cheap: the heads are computed once per image).
#: The marker thresholds matter most: where the boundary head has learned the contacts between touching
#: objects, lower thresholds on both split clumps that the distance head alone merges.
VALIDATION_GRID = {
    "marker_threshold": [0.25, 0.35, 0.5],
    "boundary_threshold": [0.25, 0.35, 0.5],
}
