"""Stage 5 (label image): an OME-Zarr (NGFF 0.4) multiscale label image of the objects, written chunk by chunk on the workers.

Layout (what napari-ome-zarr, QuPath and ome-zarr-py read)::

    <stem>.ome.zarr/            (zarr v2, as NGFF 0.4 requires; the image itself is not copied)
        labels/                 .zattrs {"labels": ["objects"]}
        labels/objects/         multiscales + "image-label"; levels 0, 1, ... each half the previous
            0/ 1/ ...           uint32 (uint64 above 2^32 objects) label arrays (y, x)

The label of a pixel is the ``object_id`` of the row in the GeoParquet/GPKG. Level 0 is written one chunk per
tile core (chunk = tile: disjoint writes, no locks) from the window labels the tile stage stored, mapped to
final object ids: ids are given in the writer's order (tiles in order, each tile's part-file rows in order,
joined pieces under the id of their group's first piece), computed here without a second pass over objects.
Each further level is decimated from the one below (nearest: labels are never interpolated), in parallel
by output chunk. Nothing is held whole in memory. The store is written into the work folder (a path or URL
every worker reaches) and published with the other outputs (:mod:`pipeline.io.publish`).
"""

from __future__ import annotations

import numpy as np

from pipeline.io import storage
from pipeline.stages.grid import TileGrid
from pipeline.stages.tile_task import part_path

__all__ = ["object_id_plan", "write_label_image", "LEVEL_CHUNK"]

LEVEL_CHUNK = 512  # chunk side of the levels above 0
MIN_LEVEL_SIDE = 256  # stop adding levels once the image fits in this


def object_id_plan(workdir: str, n_tiles: int, groups: dict[int, int]) -> tuple[np.ndarray, dict[int, int], int]:
    """First object id of every tile (ids start at 1), the id of every joined group (by its first piece's key)
    and the number of objects — the order in which :func:`pipeline.io.outputs.assemble_objects` numbers them."""
    first = np.zeros(n_tiles, np.int64)
    rep_id: dict[int, int] = {}
    nxt = 1
    for t in range(n_tiles):
        keys = storage.read_parquet(part_path(workdir, t), columns=["key"]).column("key").to_numpy()
        first[t] = nxt
        emitted = _emitted(keys, groups)
        if groups:
            ids = nxt + np.cumsum(emitted) - 1
            for i, k in enumerate(keys.tolist()):
                if groups.get(k) == k:
                    rep_id[k] = int(ids[i])
        nxt += int(emitted.sum())
    return first, rep_id, nxt - 1


def _emitted(keys: np.ndarray, groups: dict[int, int]) -> np.ndarray:
    """Rows of a part file that become an object of their own (not a later piece of a joined group)."""
    if not groups:
        return np.ones(len(keys), bool)
    return np.array([groups.get(k, k) == k for k in keys.tolist()], bool)


def _write_level0(workdir: str, store: str, grid_args: tuple, t: int, first_id: int, joined: dict[int, tuple[int, int]],
                  dtype: str) -> None:
    """Tile ``t``'s core of level 0. ``joined``: this tile's joined pieces, key → (object id, group's first key)."""
    import zarr

    grid = TileGrid(*grid_args)
    tile = grid[t]
    keys = storage.read_parquet(part_path(workdir, t), columns=["key"]).column("key").to_numpy()
    emitted = _emitted(keys, {k: r for k, (_, r) in joined.items()})
    ids = np.where(emitted, first_id + np.cumsum(emitted) - 1, 0).astype(np.int64)
    for i, k in enumerate(keys.tolist()):
        if k in joined:
            ids[i] = joined[k][0]
    win = zarr.open_array(storage.zarr_store(storage.join(workdir, "windows.zarr"), read_only=True), mode="r")
    r, c = tile.core.relative_to(tile.window)
    lab = np.asarray(win[t, r, c]).astype(np.int64)
    labels = keys & 0xFFFFFFFF
    lut = np.zeros(int(max(lab.max(initial=0), labels.max(initial=0))) + 1, np.int64)
    lut[labels] = ids
    out = zarr.open_array(storage.zarr_store(store), path="labels/objects/0", mode="r+")
    out[tile.core.row : tile.core.row_end, tile.core.col : tile.core.col_end] = lut[lab].astype(dtype)


def _write_level(store: str, level: int, cr: int, cc: int) -> None:
    import zarr

    zs = storage.zarr_store(store)
    src = zarr.open_array(zs, path=f"labels/objects/{level - 1}", mode="r")
    dst = zarr.open_array(zs, path=f"labels/objects/{level}", mode="r+")
    h, w = dst.shape
    r0, c0 = cr * LEVEL_CHUNK, cc * LEVEL_CHUNK
    r1, c1 = min(h, r0 + LEVEL_CHUNK), min(w, c0 + LEVEL_CHUNK)
    dst[r0:r1, c0:c1] = src[2 * r0 : 2 * r1 : 2, 2 * c0 : 2 * c1 : 2]


def _level_shapes(h: int, w: int) -> list[tuple[int, int]]:
    shapes = [(h, w)]
    while max(shapes[-1]) > MIN_LEVEL_SIDE:
        ph, pw = shapes[-1]
        shapes.append(((ph + 1) // 2, (pw + 1) // 2))
    return shapes


def _metadata(levels: int, scale: tuple[float, float], unit: str | None, name: str) -> dict:
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if unit:
        for a in axes:
            a["unit"] = unit
    datasets = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [scale[0] * 2**i, scale[1] * 2**i]}]}
                for i in range(levels)]
    return {"multiscales": [{"version": "0.4", "name": name, "axes": axes, "datasets": datasets,
                             "type": "nearest", "metadata": {"method": "numpy stride: every 2nd pixel (nearest)"}}],
            "image-label": {"version": "0.4", "source": {"image": "../../"}}}


def write_label_image(client, workdir: str, grid: TileGrid, groups: dict[int, int], info, dest: str) -> dict:
    """Write ``dest`` (``<stem>.ome.zarr`` in the work folder) with the Dask ``client``; returns what the
    summary records."""
    import zarr
    from numcodecs import Zstd

    first, rep_id, n_obj = object_id_plan(workdir, len(grid), groups)
    dtype = "uint32" if n_obj < 2**32 else "uint64"
    tmp = dest
    storage.remove(tmp, recursive=True)
    if info.pixel_size_um and not info.crs_wkt:
        scale, unit = (info.pixel_size_um[1], info.pixel_size_um[0]), "micrometer"
    else:  # level-0 pixels per working pixel (the resolution rule may read a coarser level or resample)
        scale, unit = (float(getattr(info, "scale", 1.0)), float(getattr(info, "scale", 1.0))), None
    shapes = _level_shapes(grid.height, grid.width)
    root = zarr.open_group(storage.zarr_store(tmp), mode="w", zarr_format=2)
    lg = root.require_group("labels")
    lg.attrs["labels"] = ["objects"]
    og = lg.require_group("objects")
    og.attrs.update(_metadata(len(shapes), scale, unit, "objects"))
    for i, shp in enumerate(shapes):
        ch = (grid.tile, grid.tile) if i == 0 else (LEVEL_CHUNK, LEVEL_CHUNK)
        og.create_array(str(i), shape=shp, chunks=ch, dtype=dtype, compressors=Zstd(level=3), fill_value=0,
                        chunk_key_encoding={"name": "v2", "separator": "/"})
    grid_args = (grid.height, grid.width, grid.tile, grid.halo)
    joined_by_tile: dict[int, dict[int, tuple[int, int]]] = {}
    for k, r in groups.items():
        joined_by_tile.setdefault(k >> 32, {})[k] = (rep_id[r], r)
    futs = client.map(_write_level0, [workdir] * len(grid), [str(tmp)] * len(grid), [grid_args] * len(grid),
                      list(range(len(grid))), first.tolist(), [joined_by_tile.get(t, {}) for t in range(len(grid))],
                      [dtype] * len(grid), pure=False)
    client.gather(futs)
    for lv in range(1, len(shapes)):
        h, w = shapes[lv]
        cells = [(r, c) for r in range(-(-h // LEVEL_CHUNK)) for c in range(-(-w // LEVEL_CHUNK))]
        client.gather(client.map(_write_level, [str(tmp)] * len(cells), [lv] * len(cells), [c[0] for c in cells],
                                 [c[1] for c in cells], pure=False))
    return {"path": dest, "levels": [list(s) for s in shapes], "dtype": dtype, "objects": n_obj}

