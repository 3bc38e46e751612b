"""Post-processing threshold grids: ``seamline tune`` (wide) and training validation (narrow)."""

from __future__ import annotations

__all__ = ["GRID", "VALIDATION_GRID"]

GRID = {
    "fg_threshold": [0.4, 0.5, 0.6],
    "marker_threshold": [0.25, 0.35, 0.45, 0.55],
    "boundary_threshold": [0.25, 0.35, 0.5, 0.7],
}

#: What training validation tries every time it validates (cheap: the heads are computed once per image).
#: The marker thresholds matter most: where the boundary head has learned the contacts between touching
#: objects, lower thresholds on both split clumps that the distance head alone merges.
VALIDATION_GRID = {
    "marker_threshold": [0.25, 0.35, 0.5],
    "boundary_threshold": [0.25, 0.35, 0.5],
}
