"""Tile skipping, one mechanism for two uses: tiles the model never runs on.

* **Tissue** (slides, ``tissue.enabled``): a tissue mask from the low-resolution overview that
  :func:`pipeline.stages.inputs.plan_input` already read — Otsu on saturation for brightfield (tissue is
  coloured, glass is white-grey) or on intensity for fluorescence (signal on black), specks and small holes
  removed, grown a little so tissue rims are kept — decided *before* any full-resolution read. Tiles whose
  core holds less than ``tissue.min_fraction`` tissue are skipped, and tiles whose whole neighbourhood is
  skipped are not even ingested (a kept tile's halo still reads its neighbours' real pixels).
* **Nodata** (satellite, ``skip_nodata``): tiles whose core is entirely nodata — the collar of a rotated
  scene, alpha 0 / GDAL mask, NaN — from the per-tile valid counts the ingest returns. Objects never cover
  nodata pixels anyway: tiles zero the labels there (:mod:`pipeline.stages.tile_task`).

A skipped tile gets an empty part file and all-zero window labels, so the stitch joins nothing across it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.models.normalize import otsu
from pipeline.stages.grid import TileGrid

__all__ = ["tissue_mask", "tile_fractions", "tissue_skip", "needed_tiles", "nodata_skip"]


def tissue_mask(ov: np.ndarray, valid: np.ndarray | None = None, method: str = "auto", px_um: float | None = None,
                min_size_um: float = 20.0, dilate_um: float = 20.0) -> tuple[np.ndarray, dict[str, Any]]:
    """Tissue (True) on an overview (channels, h, w). ``px_um``: overview pixel size in µm (None: sizes of
    a few overview pixels are used). Returns the mask and what was done (method, threshold)."""
    from scipy import ndimage as ndi
    from skimage import morphology

    x = ov.astype(np.float32)
    rng = float(np.iinfo(ov.dtype).max) if ov.dtype.kind in "ui" else max(float(np.nanmax(x)), 1e-12)
    x /= rng
    if method == "auto":
        method = "saturation" if x.shape[0] >= 3 and float(np.nanmedian(x[:3].mean(axis=0))) > 0.5 else "intensity"
    if method == "saturation":
        mx, mn = x[:3].max(axis=0), x[:3].min(axis=0)
        v = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    else:
        v = x.mean(axis=0)
    ok = np.isfinite(v) if valid is None else (valid & np.isfinite(v))
    t = otsu(v[ok])  # None on a flat overview: all of it is tissue
    mask = (v > t) & ok if t is not None else ok.copy()
    px = px_um if px_um else None
    # Specks (noise, dust: smaller than a nucleus) go first; the rest is grown so that sparse nuclei of a
    # fluorescence slide and the rims of brightfield tissue make regions, whose small holes are filled.
    speck = max(1, int(math.pi / 4 * (min_size_um / px) ** 2)) if px else 2
    mask = morphology.remove_small_objects(mask, max_size=speck)
    r = max(1, int(round(dilate_um / px))) if px else 2
    mask = ndi.binary_dilation(mask, structure=morphology.disk(r))
    mask = morphology.remove_small_holes(mask, max_size=int(math.pi * (2 * r) ** 2)) & ok
    return mask, {"method": method, "threshold": t, "tissue_fraction": round(float(mask.mean()), 4) if mask.size else 0.0}


def tile_fractions(mask: np.ndarray, grid: TileGrid, working_per_overview: float) -> np.ndarray:
    """Tissue fraction of each tile core (row-major), ``working_per_overview`` working pixels per overview
    pixel."""
    f = 1.0 / working_per_overview
    out = np.zeros(len(grid))
    for t in grid:
        c = t.core
        r0, c0 = int(math.floor(c.row * f)), int(math.floor(c.col * f))
        r1 = max(r0 + 1, int(math.ceil(c.row_end * f)))
        c1 = max(c0 + 1, int(math.ceil(c.col_end * f)))
        sub = mask[min(r0, mask.shape[0] - 1) : r1, min(c0, mask.shape[1] - 1) : c1]
        out[t.index] = float(sub.mean()) if sub.size else 0.0
    return out


def tissue_skip(fractions: np.ndarray, min_fraction: float) -> set[int]:
    """Tiles whose tissue fraction is below ``min_fraction`` (a tile with none is skipped even at 0)."""
    return {int(i) for i in np.nonzero((fractions < min_fraction) | (fractions == 0))[0]}


def needed_tiles(grid: TileGrid, skip: set[int]) -> set[tuple[int, int]]:
    """(tile_row, tile_col) of the tiles to ingest: every kept tile and its 8 neighbours (its halo)."""
    rows, cols = grid.shape
    need = set()
    for t in grid:
        if t.index in skip:
            continue
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r, c = t.grid_row + dr, t.grid_col + dc
                if 0 <= r < rows and 0 <= c < cols:
                    need.add((r, c))
    return need


def nodata_skip(grid: TileGrid, counts: list[tuple[int, int, int]]) -> set[int]:
    """Tiles whose core has no valid pixel, from the ingest's ``(tile_row, tile_col, valid_px)`` counts."""
    cols = grid.shape[1]
    return {r * cols + c for r, c, n in counts if n == 0}
