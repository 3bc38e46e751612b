"""GeoTIFF training data grouped by *place*, at one ground sampling distance.

Web-map chips (the Kampala building data) come at several zoom levels that show the same buildings: a
random split by chip would put one building in training at 0.075 m and in validation at 0.30 m, and the
validation score would measure memory, not generalisation. Here chips are grouped into square *places*
(cells of ``place_size`` map units, by chip centre); the chips of one place and one resolution are
mosaicked into one sample, resampled to the model's ``pixel_size``; and the split
(:func:`split_by_place`) holds out whole places, every resolution of them together.

Resampling to one GSD is what lets the model be run at its training resolution later (the checkpoint
records ``pixel_size``): the network learns buildings at one scale instead of three.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from pipeline.errors import InputError
from pipeline.training.samples import Sample, detect, expand_paths, instance_class_map, normalised, vector_classes

__all__ = ["expand_paths", "load_places_dataset", "split_by_place", "place_of"]


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


def load_places_dataset(rasters: list[str], vectors: str, pixel_size: float, place_size: float,
                        in_channels: int = 3, classes: list[str] | None = None):
    """One :class:`~pipeline.training.data.Sample` per (place, source resolution): mosaicked, resampled to
    ``pixel_size`` (bilinear), labels rasterised on the resampled grid (one instance per polygon)."""
    import geopandas as gpd
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.features import rasterize
    from rasterio.transform import from_origin


    files = expand_paths(rasters, "rasters")
    groups: dict[tuple[int, int, float], list[str]] = defaultdict(list)
    crs = None
    for f in files:
        with rasterio.open(f) as ds:
            if ds.crs is None:
                raise InputError(f"training raster {f}: no CRS; place-based training needs georeferenced rasters")
            crs = crs or ds.crs
            if ds.crs != crs:
                raise InputError(f"training raster {f}: CRS {ds.crs} differs from {crs}; reproject the rasters to one CRS")
            cx, cy = ds.xy(ds.height / 2, ds.width / 2)
            res = round(abs(ds.transform.a), 4)
        groups[(int(np.floor(cx / place_size)), int(np.floor(cy / place_size)), res)].append(f)
    gdf = gpd.read_file(vectors)
    gdf = gdf.to_crs(crs) if gdf.crs is not None else gdf
    poly_cls = vector_classes(gdf, classes, str(vectors))
    kept = [i for i, g in enumerate(gdf.geometry) if g is not None and not g.is_empty]
    geoms = [gdf.geometry.iloc[i] for i in kept]
    inst_cls = instance_class_map(poly_cls, kept)
    samples = []
    for (px, py, res), members in sorted(groups.items()):
        data, tf, prof = mosaic(members)
        nodata = prof["nodata"]
        h, w = data.shape[1:]
        scale = res / pixel_size
        oh, ow = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        out = np.empty((data.shape[0], oh, ow), np.float32)
        from rasterio.warp import reproject

        otf = from_origin(tf.c, tf.f, pixel_size, pixel_size)
        for b in range(data.shape[0]):
            reproject(data[b].astype(np.float32), out[b], src_transform=tf, src_crs=crs, dst_transform=otf,
                      dst_crs=crs, resampling=Resampling.bilinear)
        shapes = [(g, i + 1) for i, g in enumerate(geoms)]
        lab = rasterize(shapes, out_shape=(oh, ow), transform=otf, fill=0, dtype="int32") if shapes else np.zeros((oh, ow), np.int32)
        norm = normalised(out, in_channels, nodata)
        samples.append(Sample(f"p{px}_{py}@{res:g}m", norm, lab, "place", instance_classes=inst_cls, detected=detect(out)))
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
