"""Box labels as training data (``data: {kind: boxes, rasters: [...], boxes: [...]}``).

Three box formats are read, and matched to images by file name — else by the name without its extension —
(or, for vector files, by location):

* **Pascal VOC XML** — ``<filename>`` names the image; ``<object><name>`` the class; ``<bndbox>`` the
  pixel box (the NEON/DeepForest annotations).
* **CSV** — DeepForest style, one box per row: ``image_path, xmin, ymin, xmax, ymax, label``. Columns are
  found by *name*, never by position: the SJER truth file orders them ``xmin, xmax, ymin, ymax``.
* **vector files** (GeoPackage, GeoJSON, Shapefile): each geometry's bounds is a box, placed on every
  georeferenced raster it overlaps (reprojected to the raster's CRS); class from a ``class`` or ``label``
  column.

Large images can be cut into tiles (``tile``): the tiles are then the unit of the train/validation split
(as NEON's 400 × 400 benchmark tiles are), and a box is kept in a tile when at least half of it lies there.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.evaluation.boxfiles import boxes_of_image, read_box_file
from pipeline.training.samples import Sample, class_indices, detect, expand_paths, normalised, read_image

__all__ = ["load_box_dataset"]
VECTOR_EXTS = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".parquet")


def _vector_boxes(path: str, raster: str) -> list[tuple[float, float, float, float, str]]:
    """Pixel boxes of the geometries of a vector file that fall on a georeferenced raster."""
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box as sbox

    with rasterio.open(raster) as ds:
        if ds.crs is None:
            return []
        gdf = gpd.read_file(path)
        gdf = gdf.to_crs(ds.crs) if gdf.crs is not None else gdf
        inv = ~ds.transform
        bounds = sbox(*ds.bounds)
        col = next((c for c in ("class", "label") if c in gdf.columns), None)
        rows = []
        for i, g in enumerate(gdf.geometry):
            if g is None or g.is_empty or not g.intersects(bounds):
                continue
            x0, y0, x1, y1 = g.bounds
            (c0, r0), (c1, r1) = inv * (x0, y1), inv * (x1, y0)
            rows.append((min(c0, c1), min(r0, r1), max(c0, c1), max(r0, r1), str(gdf[col].iloc[i]) if col else "object"))
    return rows


def _tiles(h: int, w: int, tile: int | None):
    if not tile or (h <= tile and w <= tile):
        yield 0, 0, h, w
        return
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            yield y, x, min(tile, h - y), min(tile, w - x)


def load_box_dataset(rasters: list[str], box_files: list[str], in_channels: int = 3, tile: int | None = None,
                     classes: list[str] | None = None):
    """One :class:`~pipeline.training.data.Sample` per image (or tile) with ``boxes`` (N, 4) and their classes;
    ``labels`` holds nothing (zeros): box samples are trained and scored on their boxes. With several
    ``classes``, each box's label must be one of them (``instance_classes``: box ``i`` ↔ index ``i + 1``)."""
    images = expand_paths(rasters, "rasters")
    files = expand_paths(box_files, "boxes")
    table: dict[str, list] = defaultdict(list)
    vectors = [f for f in files if Path(f).suffix.lower() in VECTOR_EXTS]
    for f in files:
        if f not in vectors:
            for name, rows in read_box_file(f).items():
                table[name] += rows
    samples = []
    for img_path in images:
        rows = list(boxes_of_image(table, img_path) or [])
        for v in vectors:
            rows += _vector_boxes(v, img_path)
        if not rows:
            raise InputError(f"training image {img_path}: no box in {', '.join(files)} names it; box files must refer to "
                             "the image by file name (VOC <filename>, CSV image_path) or overlap it (vector files)")
        img = read_image(Path(img_path))
        h, w = img.shape[1:]
        allb = np.array([r[:4] for r in rows], np.float64)
        allb[:, [0, 2]] = np.clip(allb[:, [0, 2]], 0, w)
        allb[:, [1, 3]] = np.clip(allb[:, [1, 3]], 0, h)
        cls = np.array([r[4] for r in rows], object)
        keep = (allb[:, 2] > allb[:, 0]) & (allb[:, 3] > allb[:, 1])
        allb, cls = allb[keep], cls[keep]
        norm = normalised(img, in_channels)
        for y, x, th, tw in _tiles(h, w, tile):
            b = allb - [x, y, x, y]
            clipped = b.copy()
            clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, tw)
            clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, th)
            area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
            inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
            k = inside > 0
            name = Path(img_path).stem + (f"@{y}_{x}" if (th, tw) != (h, w) else "")
            s = Sample(name, np.ascontiguousarray(norm[:, y : y + th, x : x + tw]), np.zeros((th, tw), np.int32), "boxes",
                       detected=detect(img[:, y : y + th, x : x + tw]))
            # Every box that shows in the tile trains (its visible part is a crown, not background); only those
            # at least half inside count as truth when scoring, the others are neither found nor missed.
            s.boxes, s.box_classes = clipped[k].astype(np.float32), list(cls[k])
            s.box_counted = (inside >= 0.5 * area)[k]
            if classes and len(classes) > 1:
                idx = class_indices(s.box_classes, classes, f"training boxes for {img_path}")
                s.instance_classes = np.concatenate([[-1], idx]).astype(np.int64)
            samples.append(s)
    return samples
