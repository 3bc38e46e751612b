"""Zoomed crops at full resolution for the report: where objects are densest, and where the most objects
cross a tile seam (the place a stitching error would show: an object cut in two, or doubled).

Each crop reads one small window from the zarr store and the objects whose boxes meet it (streamed from the
GeoParquet file, one pass for all crops), and draws their outlines — and, on the seam crop, the seams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.report.quicklook import BATCH_ROWS, CELL, Quicklook
from pipeline.report.render import draw_outlines, stretch, to_rgb, world_to_pixel

__all__ = ["Crop", "crop_windows", "render_crops", "SIDE"]

SIDE = 384  # scene pixels per crop side
ZOOM = 2  # display pixels per scene pixel


@dataclass
class Crop:
    title: str
    caption: str
    window: tuple[int, int, int, int]  # row, col, height, width in scene pixels
    seams: bool = False
    image: np.ndarray | None = None
    objects: int = 0


def _window(cy: float, cx: float, height: int, width: int) -> tuple[int, int, int, int]:
    h, w = min(SIDE, height), min(SIDE, width)
    r = int(min(max(cy - h / 2, 0), height - h))
    c = int(min(max(cx - w / 2, 0), width - w))
    return r, c, h, w


def crop_windows(q: Quicklook, height: int, width: int, tile: int) -> list[Crop]:
    """The densest cell, and the cell with most seam-crossing objects snapped onto its nearest seam."""
    crops: list[Crop] = []
    if q.density.max(initial=0) > 0:
        i, j = np.unravel_index(int(np.argmax(q.density)), q.density.shape)
        win = _window((i + 0.5) * CELL, (j + 0.5) * CELL, height, width)
        crops.append(Crop("Densest area", f"{int(q.density[i, j])} objects in the densest {CELL} × {CELL} px cell "
                                          f"(rows {win[0]}–{win[0] + win[2]}, columns {win[1]}–{win[1] + win[3]})", win))
    if (height > tile or width > tile) and q.seam_density.max(initial=0) > 0:
        i, j = np.unravel_index(int(np.argmax(q.seam_density)), q.seam_density.shape)
        cy, cx = (i + 0.5) * CELL, (j + 0.5) * CELL
        # snap the centre onto the nearest interior seam in each direction that is within the cell
        sy, sx = round(cy / tile) * tile, round(cx / tile) * tile
        if 0 < sy < height and abs(sy - cy) <= CELL:
            cy = sy
        if 0 < sx < width and abs(sx - cx) <= CELL:
            cx = sx
        win = _window(cy, cx, height, width)
        crops.append(Crop("Tile seam", f"{int(q.seam_density[i, j])} objects cross a tile seam here; seams "
                                       f"({tile} px tiles) drawn dashed", win, seams=True))
    return crops


def _dashed_seams(draw, win: tuple[int, int, int, int], tile: int, zoom: int) -> None:
    r, c, h, w = win
    colour = (255, 255, 255)
    for x in range((c // tile + 1) * tile, c + w, tile):
        X = (x - c) * zoom
        for y in range(0, h * zoom, 12):
            draw.line([X, y, X, min(y + 6, h * zoom)], fill=colour, width=1)
    for y in range((r // tile + 1) * tile, r + h, tile):
        Y = (y - r) * zoom
        for x in range(0, w * zoom, 12):
            draw.line([x, Y, min(x + 6, w * zoom), Y], fill=colour, width=1)


def render_crops(crops: list[Crop], zarr_path: str, parquet_path: str, transform: Sequence[float], percentiles,
                 colours: dict, tile: int, nodata=None) -> list[Crop]:
    """Read each crop's window, stretch it, enlarge it ``ZOOM`` times and draw the outlines that meet it."""
    import pyarrow.parquet as pq
    import shapely
    import zarr
    from PIL import Image, ImageDraw

    if not crops:
        return crops
    arr = zarr.open_array(zarr_path, path="image", mode="r")
    inv = world_to_pixel(transform)
    picked: list[list] = [[] for _ in crops]
    for rb in pq.ParquetFile(parquet_path).iter_batches(batch_size=BATCH_ROWS, columns=["class", "geometry"]):
        geoms = shapely.from_wkb(rb.column("geometry").to_numpy(zero_copy_only=False))
        classes = rb.column("class").to_numpy(zero_copy_only=False)
        b = shapely.bounds(geoms)
        xs = np.stack([b[:, 0], b[:, 2], b[:, 0], b[:, 2]])
        ys = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3]])
        px, py = inv.a * xs + inv.b * ys + inv.c, inv.d * xs + inv.e * ys + inv.f
        x0, x1, y0, y1 = px.min(0), px.max(0), py.min(0), py.max(0)
        for k, cr in enumerate(crops):
            r, c, h, w = cr.window
            sel = (x1 >= c) & (x0 <= c + w) & (y1 >= r) & (y0 <= r + h)
            if sel.any():
                picked[k].append((geoms[sel], classes[sel]))
    for cr, got in zip(crops, picked):
        r, c, h, w = cr.window
        block = np.asarray(arr[:, r:r + h, c:c + w])
        rgb = to_rgb(stretch(block, percentiles))
        if nodata is not None:
            rgb[np.all(block == nodata, axis=0)] = 0
        img = Image.fromarray(rgb).resize((w * ZOOM, h * ZOOM), Image.NEAREST)
        draw = ImageDraw.Draw(img)
        if cr.seams:
            _dashed_seams(draw, cr.window, tile, ZOOM)
        for geoms, classes in got:
            draw_outlines(draw, geoms, classes, colours, inv, 1.0 / ZOOM, offset=(c, r), width=1)
            cr.objects += len(geoms)
        cr.image = np.asarray(img)
    return crops
