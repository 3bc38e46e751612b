"""Ground truth and predictions as label images on one pixel grid: what ``seamline evaluate`` (objects and
boxes) reads. Label images are read as they are; vector polygons are rasterized with one id per row onto the
grid of the raster side, of ``--like``, or of the run summary beside a Seamline output.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from affine import Affine

from pipeline.errors import InputError
from pipeline.io.scene import PIXEL_TRANSFORM, pixel_grid_transform

__all__ = ["kind", "run_summary", "summary_grid", "read_raster", "raster_grid", "read_vector", "rasterize", "grid_of",
           "load", "load_labels", "RASTER_SUFFIXES", "VECTOR_SUFFIXES"]

RASTER_SUFFIXES = (".tif", ".tiff", ".png")
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".parquet")


def kind(path: Path) -> str:
    """'raster' or 'vector' from the suffix, after checking that the file exists."""
    if not path.exists():
        raise InputError(f"evaluate: {path}: file not found; check the path")
    if path.is_dir():
        raise InputError(f"evaluate: {path}: is a folder, expected a label image or vector file; pass the file itself")
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return "raster"
    if suffix in VECTOR_SUFFIXES:
        return "vector"
    raise InputError(f"evaluate: {path}: unsupported file type '{suffix or '(none)'}'; expected a label image "
                     f"({', '.join(RASTER_SUFFIXES)}) or polygons ({', '.join(VECTOR_SUFFIXES)}); convert it to one of these")


def run_summary(path: Path) -> dict | None:
    """The run summary ``<stem>.json`` written beside a Seamline output, or None if there is none."""
    js = path.with_suffix(".json")
    if not js.is_file():
        return None
    try:
        summary = json.loads(js.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"evaluate: run summary {js}: not readable JSON ({exc}); re-run seamline or pass --like/--tile") from None
    if not isinstance(summary, dict):
        raise InputError(f"evaluate: run summary {js}: expected a JSON object, found {type(summary).__name__}; re-run seamline")
    return summary


def summary_grid(path: Path, summary: dict):
    try:
        shape = (int(summary["height"]), int(summary["width"]))
        transform = Affine(*[float(v) for v in summary["transform"][:6]])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"evaluate: run summary {path.with_suffix('.json')}: expected keys width, height and a 6-number "
                         f"transform, found a problem with {exc}; re-run seamline or pass --like RASTER") from None
    return shape, transform, None


def read_raster(path: Path):
    """(labels, transform, crs) of a label image; GeoTIFFs keep their georeferencing, others get identity."""
    if path.suffix.lower() == ".png":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except (OSError, UnidentifiedImageError) as exc:
            raise InputError(f"evaluate: {path}: not a readable PNG ({exc}); re-export the label image") from None
    else:
        import tifffile

        try:
            arr = tifffile.imread(path)
        except Exception as exc:  # noqa: BLE001 - tifffile raises TiffFileError, ValueError, codec errors, ...
            raise InputError(f"evaluate: {path}: not a readable TIFF ({str(exc)[:160]}); re-export the label image") from None
    while arr.ndim > 2 and 1 in (arr.shape[0], arr.shape[-1]):  # (1, H, W) pages, (H, W, 1) samples
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"evaluate: {path}: expected a 2-D label image (one value per pixel), found shape {arr.shape}; "
                         "save a single-band integer label image")
    grid = raster_grid(path)  # a TIFF flavour GDAL cannot read has no georeferencing it could read either
    transform, crs = (grid[1], grid[2]) if grid and grid[0] == arr.shape else (Affine(*PIXEL_TRANSFORM), None)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError(f"evaluate: {path}: expected integer object ids, found non-integer {arr.dtype} values; "
                             "save the labels as an integer image")
    elif arr.dtype.kind not in "biu":
        raise InputError(f"evaluate: {path}: expected integer object ids, found pixel type {arr.dtype}; save an integer label image")
    if arr.size and arr.min() < 0:
        raise InputError(f"evaluate: {path}: expected object ids ≥ 0 (0 = background), found {arr.min()}; relabel the image")
    return arr.astype(np.int64), transform, crs


def raster_grid(path: Path):
    """``(shape, transform, crs)`` from the header only (any band count), or None if GDAL cannot read it.

    GeoTIFFs keep their georeferencing; a plain TIFF or a PNG gets x = column, y = -row
    (:data:`~pipeline.io.scene.PIXEL_TRANSFORM`), where GDAL and QGIS place it and Seamline writes its objects.
    """
    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning: expected for microscopy images
            with rasterio.open(path) as ds:
                crs = ds.crs
                wkt = crs.to_wkt() if crs is not None else None
                return (ds.height, ds.width), Affine(*pixel_grid_transform(tuple(ds.transform)[:6], wkt)), crs
    except rasterio.errors.RasterioError:
        return None


def read_vector(path: Path):
    import geopandas as gpd

    try:
        if path.suffix.lower() == ".parquet":
            return gpd.read_parquet(path)
        layer = None
        if path.suffix.lower() == ".gpkg":
            import pyogrio

            layers = [str(name) for name in pyogrio.list_layers(path)[:, 0]]
            if "objects" in layers or len(layers) > 1:
                if "objects" not in layers:
                    raise InputError(f"evaluate: {path}: expected a layer 'objects' or a single layer, found layers "
                                     f"{layers}; keep only the polygon layer or name it 'objects'")
                layer = "objects"
        return gpd.read_file(path, layer=layer)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyogrio/pyarrow/geopandas each raise their own types for unreadable files
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputError(f"evaluate: {path}: not readable as polygons ({first}); expected a GeoPackage, "
                         "GeoJSON or GeoParquet file") from None


def rasterize(path: Path, grid, cls: str | None = None) -> np.ndarray:
    """Burn each row of a polygon file with its own id (row order, from 1) onto ``grid`` (only the rows of
    class ``cls`` when given)."""
    from rasterio.features import rasterize

    shape, transform, crs = grid
    gdf = read_vector(path)
    if cls is not None:
        gdf = gdf[gdf["class"].astype(str) == cls]
    if crs is not None and gdf.crs is not None and gdf.crs != crs:
        gdf = gdf.to_crs(crs)  # a GeoTIFF and polygons in different CRSs would otherwise silently miss
    geoms = [(g, i + 1) for i, g in enumerate(gdf.geometry) if g is not None and not g.is_empty]
    bad = sorted({g.geom_type for g, _ in geoms} - {"Polygon", "MultiPolygon"})
    if bad:
        raise InputError(f"evaluate: {path}: expected Polygon or MultiPolygon geometries, found {', '.join(bad)}; "
                         "keep only the object outlines")
    if not geoms:
        return np.zeros(shape, np.int64)
    if crs is None and tuple(transform)[:6] == PIXEL_TRANSFORM and len(gdf) and gdf.total_bounds[1] >= 0:
        # pixel-grid polygons in the y = row convention (QuPath's, and Seamline's before it placed such images as
        # GDAL and QGIS do): every y >= 0 where the grid's are <= 0
        # (a GeoJSON of pixel coordinates claims lon/lat by the format's rule: its CRS is not looked at here)
        transform = Affine.identity()
    corners = np.array([transform * xy for xy in ((0, 0), (shape[1], 0), (0, shape[0]), (shape[1], shape[0]))])
    x0, y0, x1, y1 = gdf.total_bounds
    if x1 < corners[:, 0].min() or x0 > corners[:, 0].max() or y1 < corners[:, 1].min() or y0 > corners[:, 1].max():
        raise InputError(f"evaluate: {path}: no polygon falls on the {shape[0]}x{shape[1]} px grid (polygons span x {x0:g}..{x1:g}, "
                         f"y {y0:g}..{y1:g}; grid x {corners[:, 0].min():g}..{corners[:, 0].max():g}, y {corners[:, 1].min():g}.."
                         f"{corners[:, 1].max():g}); compare files of the same image and coordinate system")
    dtype = "int32" if len(gdf) < 2**31 - 1 else "int64"
    return rasterize(geoms, out_shape=shape, transform=transform, fill=0, dtype=dtype).astype(np.int64)


def grid_of(like):
    """``like`` as ``(shape, transform, crs)``: from a raster path (any image, e.g. the RGB scene the
    polygons were drawn on; only its header is read) or a tuple ``(shape, transform[, crs])``."""
    if like is None:
        return None
    if isinstance(like, (str, Path)):
        p = Path(like)
        if not p.is_file():
            raise InputError(f"evaluate: --like {p}: file not found; pass the image the polygons were drawn on")
        # only the grid is read: any raster GDAL opens (a VRT mosaic, JPEG 2000, ...), not just label images
        if p.suffix.lower() in VECTOR_SUFFIXES or (grid := raster_grid(p)) is None:
            raise InputError(f"evaluate: --like {p}: expected a raster GDAL can read (GeoTIFF, VRT, PNG, ...), "
                             "found none; pass the image the polygons were drawn on")
        return grid
    shape, transform, *rest = like
    transform = transform if isinstance(transform, Affine) else Affine(*[float(v) for v in list(transform)[:6]])
    return (int(shape[0]), int(shape[1])), transform, (rest[0] if rest else None)


def load(path: Path, like=None):
    """(labels, transform, crs)."""
    if kind(path) == "raster":
        return read_raster(path)
    grid = grid_of(like)
    if grid is None:
        summary = run_summary(path)
        if summary is None:
            raise InputError(f"evaluate: {path}: polygons need a pixel grid to be rasterized on, found no raster input "
                             f"and no run summary {path.with_suffix('.json').name}; pass --like RASTER (the image they were drawn on)")
        grid = summary_grid(path, summary)
    return rasterize(path, grid), grid[1], grid[2]


def load_labels(path, like=None):
    """Read a label image, or rasterize a polygon file with one id per row.

    Metrics compare pixels, so polygons must be burnt onto the grid of the image they describe; a wrong
    grid shows up as AP 0, hence the grid is never guessed.

    Parameters
    ----------
    path : str or Path
        ``.tif/.tiff/.png`` label image (0 = background) or ``.gpkg/.geojson/.parquet`` polygons.
    like : tuple or str or Path, optional
        For polygons: ``(shape, transform[, crs])`` or a raster path whose grid to use. Default: the run
        summary ``<stem>.json`` beside a Seamline output.

    Returns
    -------
    labels : ndarray of int64, 2-D
    transform : affine.Affine
        The GeoTIFF's transform, or x = column, y = -row (PIXEL_TRANSFORM) for a plain image.

    Raises
    ------
    InputError
        Missing or unreadable file, unsupported type, not a 2-D integer image, or no grid for polygons.
    """
    labels, transform, _ = load(Path(path), like)
    return labels, transform
