"""Stage 4 (stitch): join object pieces across tile cores into whole objects, each exactly once.

Every tile keeps only the pieces of objects in its core (so each pixel belongs to one tile), and every
piece has a scene-unique 64-bit key ``tile_index << 32 | label``. Two pieces in neighbouring tiles are the
same object when the two tiles' *window* labels agree about it in the seam band — the strip around the
shared border where both tiles had at least half a halo of context (:meth:`TileGrid.seam_band`):

    pieces a (tile A) and b (tile B) are joined when  |a ∩ b ∩ band| > ½ · min(|a ∩ band|, |b ∩ band|)

and both have pixels in their own core. Touching objects overlap only along their boundary, so they are
never joined; an object larger than a tile is joined along every seam it crosses, however long the chain.

Only the edge list travels (a few keys per seam-crossing object); connected components run once over the
keys that occur in it (the merge stays off the workers and small), never over all objects.
"""

from __future__ import annotations

import numpy as np

from pipeline.io import storage
from pipeline.stages.grid import TileGrid
from pipeline.stages.tile_task import TileJob, part_path, tile_key

__all__ = ["seam_edges", "match_band", "components"]


def match_band(la: np.ndarray, lb: np.ndarray, core_a: np.ndarray, core_b: np.ndarray) -> np.ndarray:
    """Pairs ``(label_a, label_b)`` that are one object, from two label arrays over the same band.

    ``core_a`` / ``core_b`` are the labels that have pixels in each tile's own core.
    """
    a = la.ravel().astype(np.int64)
    b = lb.ravel().astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    pair, ov = np.unique(a[both] * (1 << 32) + b[both], return_counts=True)
    pa, pb = pair >> 32, pair & 0xFFFFFFFF
    ids_a, na = np.unique(a[a > 0], return_counts=True)
    ids_b, nb = np.unique(b[b > 0], return_counts=True)
    size_a = na[np.searchsorted(ids_a, pa)]
    size_b = nb[np.searchsorted(ids_b, pb)]
    keep = 2 * ov > np.minimum(size_a, size_b)
    keep &= np.isin(pa, core_a) & np.isin(pb, core_b)
    return np.stack([pa[keep], pb[keep]], axis=1)


def _core_labels(workdir: str, index: int) -> np.ndarray:
    """Labels with pixels in tile ``index``'s core: the pieces its part file holds (sorted)."""
    keys = storage.read_parquet(part_path(workdir, index), columns=["key"]).column("key").to_numpy()
    return np.sort(keys & 0xFFFFFFFF)


def seam_edges(job: TileJob, index: int) -> np.ndarray:
    """Keys of pieces to join between tile ``index`` and its forward neighbours: (k, 2) int64.

    Reads only the seam bands of the windows (a strip along each shared border), not whole windows.
    """
    import zarr

    grid: TileGrid = job.grid
    arr = zarr.open_array(storage.zarr_store(storage.join(job.workdir, "windows.zarr"), read_only=True), mode="r")
    ta = grid[index]
    core_a = _core_labels(job.workdir, index)
    out = []
    for tb in grid.forward_neighbours(ta):
        band = grid.seam_band(ta, tb)
        if band.empty:
            continue
        ra, ca = band.relative_to(ta.window)
        rb, cb = band.relative_to(tb.window)
        pairs = match_band(arr[index, ra, ca], arr[tb.index, rb, cb], core_a, _core_labels(job.workdir, tb.index))
        if pairs.size:
            out.append(np.stack([tile_key(ta.index, pairs[:, 0]), tile_key(tb.index, pairs[:, 1])], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def components(edges: np.ndarray) -> dict[int, int]:
    """Map every key that occurs in ``edges`` to its group's representative (the smallest key)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if edges.size == 0:
        return {}
    keys, inv = np.unique(edges.ravel(), return_inverse=True)
    inv = inv.reshape(-1, 2)
    n = keys.size
    g = coo_matrix((np.ones(len(inv), np.int8), (inv[:, 0], inv[:, 1])), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    rep = np.full(comp.max() + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(rep, comp, keys)
    return dict(zip(keys.tolist(), rep[comp].tolist()))
