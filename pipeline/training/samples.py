"""What every training data kind is made of: a :class:`Sample`, the image reader, the per-image normalisation,
class indices of labelled objects, and path expansion. The data kinds (:mod:`pipeline.training.data` folders
and GeoTIFFs, :mod:`pipeline.training.places`, :mod:`pipeline.training.boxdata`) import this module, never
each other's internals.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.io import storage
from pipeline.models.normalize import apply_normalization, percentiles, to_model_channels
from pipeline.stages.domain import detect
from pipeline.stages.modality import Modality

__all__ = ["Sample", "IMAGE_EXTS", "read_image", "normalised", "detect", "vector_classes", "class_indices", "instance_class_map",
           "expand_paths", "local_only", "read_vectors"]

IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class Sample:
    """One training image: normalised (C, H, W) float32, instance labels (H, W) int32, name and modality."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    modality: str = "unknown"
    boxes: np.ndarray | None = None  # box samples: (N, 4) xmin, ymin, xmax, ymax in pixels (boxdata.py)
    box_classes: list[str] | None = None
    box_counted: np.ndarray | None = None  # (N,) bool: the box counts as truth when scoring
    # multi-class data: class index (into the config's classes) of each label, index 0 = background (-1)
    instance_classes: np.ndarray | None = None
    # georeferenced samples (places.py): the affine transform and CRS of the sample's grid
    transform: object | None = None
    crs: object | None = None
    # flat pixel indices where the network saw an object that is not there (hardneg.py): crops centre on them
    hard: np.ndarray | None = None
    # brightfield RGB as transmission in 0..1 (3, H, W): the Augmenter crops it, applies stain jitter and makes
    # the network input from it (pipeline/models/stain.py) instead of jittering ``image``
    raw: np.ndarray | None = None
    # the modality of the raw image, judged as an image (pipeline.stages.domain.detect, no georeferencing):
    # what the model's domain record (pipeline.training.domain) counts
    detected: Modality | None = None


def read_image(path: Path) -> np.ndarray:
    """(C, H, W) array from PNG/JPEG/TIFF, or any other raster GDAL reads (a VRT window of a scene, JPEG 2000)."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        a = tifffile.imread(path)
    elif suffix in (".png", ".jpg", ".jpeg", ".bmp"):
        from PIL import Image

        a = np.asarray(Image.open(path))
    else:
        import rasterio

        with rasterio.open(path) as ds:
            a = ds.read()
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] in (1, 2, 3, 4) and a.shape[0] not in (1, 2, 3, 4):
        a = np.moveaxis(a, -1, 0)
    if a.shape[0] == 4:  # RGBA: drop alpha
        a = a[:3]
    return a


def normalised(img: np.ndarray, in_channels: int, nodata: float | None = None) -> np.ndarray:
    """A training image as the model sees it: per-image percentile normalisation (what a run does per scene,
    :mod:`pipeline.models.normalize`; ``nodata`` values left out of the percentiles), then the model's number
    of channels."""
    return to_model_channels(apply_normalization(img, percentiles(img, nodata=nodata)), in_channels)


def vector_classes(gdf, classes: list[str] | None, where: str) -> np.ndarray | None:
    """For multi-class training (``classes`` has more than one name): each polygon's class index, from its
    ``class`` (or ``label``) attribute. ``None`` for one class. A missing column or an unknown class is one
    clear error naming the vector file."""
    if not classes or len(classes) < 2:
        return None
    col = next((c for c in ("class", "label") if c in gdf.columns), None)
    if col is None:
        raise InputError(f"training labels {where}: {len(classes)} classes {classes} need a 'class' attribute on "
                         f"each polygon; found the columns {[c for c in gdf.columns if c != 'geometry']}")
    return class_indices(gdf[col].astype(str).tolist(), classes, f"training labels {where}")


def class_indices(names: list[str], classes: list[str], what: str) -> np.ndarray:
    """Each label's index in ``classes``; a label that is not one of them is one clear error naming ``what``."""
    unknown = sorted({str(n) for n in names} - set(classes))
    if unknown:
        raise InputError(f"{what}: classes {unknown} are not in the config's classes {classes}; "
                         "add them to classes: or fix the labels")
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[str(n)] for n in names], np.int64)


def instance_class_map(polygon_classes: np.ndarray | None, kept: list[int]) -> np.ndarray | None:
    """Label → class index for labels ``1..len(kept)`` given to the polygons ``kept`` (background: -1)."""
    if polygon_classes is None:
        return None
    return np.concatenate([[-1], polygon_classes[np.asarray(kept, np.int64)]]).astype(np.int64)


def local_only(path: str | Path, what: str) -> None:
    """Training reads local files. A URL gets one line: its endpoint's problem first (a refusing endpoint, a
    403), else what to do."""
    if storage.is_url(path):
        storage.probe(path, f"training data {what}", "listing")
        raise InputError(f"training data {what}: {path} is a URL; training reads local files: copy the data to a "
                         "local folder first (e.g. aws s3 cp --recursive) and give its path")


def expand_paths(patterns: list[str], what: str) -> list[str]:
    """Paths and glob patterns → sorted existing files (one clear error if a pattern matches nothing)."""
    out: list[str] = []
    for p in patterns:
        local_only(p, what)
        hits = sorted(glob.glob(p)) if any(ch in p for ch in "*?[") else ([p] if Path(p).exists() else [])
        if not hits:
            raise InputError(f"training data {what}: {p!r} matches no file; give existing paths or glob patterns")
        out += hits
    return sorted(dict.fromkeys(out))


def read_vectors(vectors: str | Path | list[str], what: str = "vectors"):
    """One GeoDataFrame of the polygons of one file or several (e.g. the OSM outlines of two cities), in the
    first file's CRS; each file is read whole and reprojected, so files in different CRSs mix."""
    import geopandas as gpd
    import pandas as pd

    paths = [vectors] if isinstance(vectors, (str, Path)) else list(vectors)
    if not paths:
        raise InputError(f"training data {what}: no vector file given; name a GeoPackage or GeoJSON of polygons")
    frames = []
    for p in paths:
        local_only(p, what)
        if not Path(p).exists():
            raise InputError(f"training data {what}: {p} not found; give a GeoPackage/GeoJSON of polygons")
        frames.append(gpd.read_file(p))
    crs = next((f.crs for f in frames if f.crs is not None), None)
    frames = [f.to_crs(crs) if (crs is not None and f.crs is not None) else f for f in frames]
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=crs) if len(frames) > 1 else frames[0]
