"""GeoTIFF training data grouped by *place*, at one ground sampling distance, in any CRS.

Web-map chips (the Kampala building data) come at several zoom levels that show the same buildings: a
random split by chip would put one building in training at 0.075 m and in validation at 0.30 m, and the
validation score would measure memory, not generalisation. Here chips are grouped into square *places*
(cells of ``place_size`` Web Mercator metres, by chip centre: :func:`place_cell`); the chips of one place,
one CRS and one resolution are mosaicked into one sample, resampled to the model's ``pixel_size`` in ground
metres; and the split (:func:`split_by_place`) holds out whole places, every resolution of them together.

Resampling to one GSD is what lets the model be run at its training resolution later (the checkpoint
records ``pixel_size``): the network learns buildings at one scale instead of three. The GSD of a chip is its
ground pixel size (:func:`pipeline.io.scene.ground_pixel_size`), so chips in degrees (the Banepa chips:
EPSG:4326, ~1.3e-6 deg/px, 0.13 m) and chips in Web Mercator (whose metres are ground metres only at the
equator) are resampled alike, on the chips' own CRS grid — exactly what ``seamline segment``'s resolution
rule does with a scene at inference.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyproj

from pipeline.errors import InputError
from pipeline.io.scene import ground_pixel_size
from pipeline.training.samples import Sample, detect, expand_paths, instance_class_map, normalised, read_vectors, vector_classes

__all__ = ["expand_paths", "load_places_dataset", "split_by_place", "place_of", "place_cell", "place_sample", "mosaic"]

#: The grid places are cells of: Web Mercator, whose tiles are the web-map chips' own grid (one zoom-19 tile =
#: 76.437 units), so a place of that size holds every zoom level of one tile whatever CRS the chips are in.
PLACE_GRID_CRS = "EPSG:3857"


def mosaic(paths) -> tuple[np.ndarray, object, dict]:
    """GeoTIFF chips merged into one array (``rasterio.merge``): the array, its transform and the first chip's
    profile (CRS, nodata, dtype), every file closed again."""
    import rasterio
    from rasterio.merge import merge

    srcs = [rasterio.open(p) for p in paths]
    try:
        data, tf = merge(srcs)
        return data, tf, dict(srcs[0].profile)
    finally:
        for src in srcs:
            src.close()


def place_of(name: str) -> str:
    """The place of a sample name ``<place>@<resolution>`` (the name itself for other samples)."""
    return name.split("@", 1)[0]


def place_cell(crs, x: float, y: float, place_size: float) -> tuple[int, int]:
    """The place (cell indices) of a point in ``crs``: its Web Mercator coordinates divided by ``place_size``."""
    to_grid = pyproj.Transformer.from_crs(pyproj.CRS.from_user_input(crs), PLACE_GRID_CRS, always_xy=True)
    gx, gy = to_grid.transform(x, y)
    if not (math.isfinite(gx) and math.isfinite(gy)):
        raise InputError(f"training raster centre ({x}, {y}) in {crs}: no Web Mercator position (beyond ±85° latitude?); "
                         "place-based training groups chips on the web-map grid")
    return int(np.floor(gx / place_size)), int(np.floor(gy / place_size))


def _raster_info(path: str, place_size: float):
    """(CRS, place cell, ground pixel size (x, y) in metres, (height, width)) of one georeferenced raster."""
    import rasterio

    with rasterio.open(path) as ds:
        if ds.crs is None:
            raise InputError(f"training raster {path}: no CRS; place-based training needs georeferenced rasters "
                             "(a GeoTIFF, or a .aux.xml sidecar beside the file)")
        cx, cy = ds.xy(ds.height / 2, ds.width / 2)
        gsd = ground_pixel_size(ds.crs.to_wkt(), tuple(ds.transform)[:6], ds.width, ds.height)
        return ds.crs, place_cell(ds.crs, cx, cy, place_size), gsd, (ds.height, ds.width)


def place_sample(name: str, data: np.ndarray, tf, crs, nodata, gsd: tuple[float, float], geoms: list, pixel_size: float,
                 in_channels: int = 3, inst_cls: np.ndarray | None = None) -> Sample:
    """One georeferenced image (C, H, W) on the grid ``tf`` as a training sample: resampled to ``pixel_size``
    ground metres (bilinear) on its own CRS, ``geoms`` rasterised on that grid (polygon ``i`` → label ``i + 1``;
    None entries leave their label unused)."""
    from rasterio.enums import Resampling
    from rasterio.features import rasterize
    from rasterio.transform import Affine
    from rasterio.warp import reproject

    h, w = data.shape[1:]
    sx, sy = gsd[0] / pixel_size, gsd[1] / pixel_size  # output pixels per source pixel, along x and y
    oh, ow = max(1, int(round(h * sy))), max(1, int(round(w * sx)))
    otf = tf * Affine.scale(w / ow, h / oh)  # the same footprint, pixel_size metres on the ground
    out = np.empty((data.shape[0], oh, ow), np.float32)
    for b in range(data.shape[0]):
        reproject(data[b].astype(np.float32), out[b], src_transform=tf, src_crs=crs, dst_transform=otf,
                  dst_crs=crs, resampling=Resampling.bilinear)
    shapes = [(g, i + 1) for i, g in enumerate(geoms) if g is not None and not g.is_empty]
    lab = rasterize(shapes, out_shape=(oh, ow), transform=otf, fill=0, dtype="int32") if shapes else np.zeros((oh, ow), np.int32)
    return Sample(name, normalised(out, in_channels, nodata), lab, "place", instance_classes=inst_cls, transform=otf, crs=crs,
                  detected=detect(out))


def _windows(h: int, w: int, gsd: tuple[float, float], place_size: float):
    """Square windows of ``place_size`` ground metres over a scene larger than a place: (row, col, window)."""
    from rasterio.windows import Window

    th, tw = max(1, int(round(place_size / gsd[1]))), max(1, int(round(place_size / gsd[0])))
    for r, y in enumerate(range(0, h, th)):
        for c, x in enumerate(range(0, w, tw)):
            yield r, c, Window(x, y, min(tw, w - x), min(th, h - y))


def load_places_dataset(rasters: list[str], vectors, pixel_size: float, place_size: float,
                        in_channels: int = 3, classes: list[str] | None = None):
    """One :class:`~pipeline.training.samples.Sample` per (place, CRS, source resolution): mosaicked, resampled
    to ``pixel_size`` ground metres (bilinear) on the chips' own CRS, labels rasterised on the resampled grid
    (one instance per polygon). Chips in several CRSs (Kampala in Web Mercator, Banepa in degrees) may be mixed.

    ``vectors``: a vector file, several, or a GeoDataFrame. A raster more than 1.5 places across (a whole scene
    rather than a web-map chip) is cut into windows of ``place_size`` ground metres on its own grid, each its
    own place, named ``<stem>-<row>-<col>``."""
    import rasterio

    files = expand_paths(rasters, "rasters")
    groups: dict[tuple, list[str]] = defaultdict(list)
    scenes: list[tuple[str, object, tuple[float, float]]] = []
    gsds: dict[tuple, tuple[float, float]] = {}
    crss: dict[str, object] = {}
    for f in files:
        crs, (px, py), gsd, (h, w) = _raster_info(f, place_size)
        crss[crs.to_string()] = crs
        if max(h * gsd[1], w * gsd[0]) > 1.5 * place_size:
            scenes.append((f, crs, gsd))
            continue
        key = (px, py, round(math.sqrt(gsd[0] * gsd[1]), 4), crs.to_string())
        groups[key].append(f)
        gsds.setdefault(key, gsd)
    gdf_all = vectors if hasattr(vectors, "geometry") else read_vectors(vectors)
    poly_cls = vector_classes(gdf_all, classes, "training labels")
    kept = [i for i, g in enumerate(gdf_all.geometry) if g is not None and not g.is_empty]
    inst_cls = instance_class_map(poly_cls, kept)
    geoms_by_crs: dict[str, list] = {}

    def geoms_in(crs_key: str) -> list:
        if crs_key not in geoms_by_crs:
            g = gdf_all.to_crs(crss[crs_key]) if gdf_all.crs is not None else gdf_all
            geoms_by_crs[crs_key] = [g.geometry.iloc[i] for i in kept]
        return geoms_by_crs[crs_key]

    samples = []
    for (px, py, res, crs_key), members in sorted(groups.items()):
        data, tf, prof = mosaic(members)
        samples.append(place_sample(f"p{px}_{py}@{res:g}m", data, tf, crss[crs_key], prof["nodata"],
                                    gsds[(px, py, res, crs_key)], geoms_in(crs_key), pixel_size, in_channels, inst_cls))
    for f, crs, gsd in scenes:
        stem = Path(f).name.split(".")[0].replace("@", "_")
        res = round(math.sqrt(gsd[0] * gsd[1]), 4)
        with rasterio.open(f) as ds:
            for r, c, win in _windows(ds.height, ds.width, gsd, place_size):
                data = ds.read(window=win)
                samples.append(place_sample(f"{stem}-{r}-{c}@{res:g}m", data, ds.window_transform(win), crs, ds.nodata,
                                            gsd, geoms_in(crs.to_string()), pixel_size, in_channels, inst_cls))
    return samples


def split_by_place(samples, val_fraction: float, seed: int):
    """Hold out whole places (every resolution of a place on the same side), chosen with a fixed seed."""
    places = sorted({place_of(s.name) for s in samples})
    rng = np.random.default_rng(seed)
    n_val = int(round(len(places) * val_fraction))
    if val_fraction > 0 and len(places) > 1:
        n_val = max(1, n_val)
    val_places = {places[i] for i in rng.permutation(len(places))[:n_val]}
    train = [s for s in samples if place_of(s.name) not in val_places]
    val = [s for s in samples if place_of(s.name) in val_places]
    return train, val
