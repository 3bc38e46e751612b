"""``seamline view OUT/<stem>``: the scene and its objects in napari (optional extra ``view``).

The image is the run's input read lazily (a dask array per pyramid level, windowed GDAL reads, decimated
reads for the coarse levels), so a whole-slide scene opens without loading it; the objects are the
GeoParquet polygons in pixel coordinates, outlined in the class colours used everywhere else. Scenes with
more objects than napari's Shapes layer handles smoothly get centroids (a Points layer) instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pipeline.errors import InputError, SeamlineError
from pipeline.io.palette import class_colours
from pipeline.io.sources import open_source
from pipeline.report.render import world_to_pixel
from pipeline.report.stage import model_classes

__all__ = ["find_summary", "add_scene_layers", "view", "INSTALL_HINT", "MAX_POLYGONS"]

INSTALL_HINT = "pip install 'seamline[view]' (napari with PyQt5)"
MAX_POLYGONS = 50_000
BLOCK = 1024


def find_summary(target: str | Path) -> dict:
    """``OUT/<stem>`` (or ``OUT/<stem>.json``, or any ``OUT/<stem>.*`` output) → the run summary."""
    p = Path(target)
    candidates = [p.with_name(p.name + ".json"), p] if p.suffix != ".json" else [p]
    stem = p.name.split(".")[0]
    candidates.append(p.with_name(stem + ".json"))
    for c in candidates:
        if c.suffix == ".json" and c.is_file():
            return json.loads(c.read_text())
    raise InputError(f"seamline view {target}: no run summary {p.with_name(stem + '.json')}; pass OUT/<stem> of a "
                     "finished `seamline segment` run")


def _source_read(spec: tuple, level: int, row: int, col: int, h: int, w: int, band: int) -> np.ndarray:
    """One window of one band, the source reopened by its URL (cached per process): the task holds only
    strings and numbers, so any dask scheduler — a distributed Client in the same session too — can run it."""
    url, reader, series = spec
    return open_source(url, reader=reader, series=series, cache=True).read(level, row, col, h, w, [band])[0]


def _lazy_levels(src, band: int, spec: tuple):
    """Pyramid of lazy 2-D dask arrays of one band of an opened image source (:mod:`pipeline.io.sources`: GDAL
    rasters, slides, OME-TIFF, OME-Zarr): full resolution, then halved until ≤ 2048 px. Each halved level is
    read from the source's own pyramid level closest below it (a slide's or COG's overview), then picked down
    to size, so a coarse view never decodes full-resolution pixels where the file has a pyramid. ``src`` gives
    the sizes; the reads reopen it from ``spec`` = (url, reader, series): see :func:`_source_read`."""
    import dask
    import dask.array as da

    height, width, dtype = src.height, src.width, np.dtype(src.dtype)
    src_levels = [(lv.height, lv.width, lv.downsample) for lv in src.levels]

    def read(level: int, r: int, c: int, h: int, w: int) -> np.ndarray:
        s = 2 ** level
        # the source level with the largest downsample not above s
        li = max((i for i, lv in enumerate(src_levels) if lv[2] <= s * 1.001), key=lambda i: src_levels[i][2])
        lh, lw, ld = src_levels[li]
        f = s / ld  # target pixel -> source-level pixels
        r0, c0 = int(r * f), int(c * f)
        r1, c1 = min(lh, max(r0 + 1, int(math.ceil((r + h) * f)))), min(lw, max(c0 + 1, int(math.ceil((c + w) * f))))
        px = _source_read(spec, li, r0, c0, r1 - r0, c1 - c0, band)
        rows = np.minimum((np.arange(h) * f).astype(np.int64), px.shape[0] - 1)
        cols = np.minimum((np.arange(w) * f).astype(np.int64), px.shape[1] - 1)
        return px[np.ix_(rows, cols)]

    levels = []
    level = 0
    while True:
        hh, ww = math.ceil(height / 2 ** level), math.ceil(width / 2 ** level)
        rows = []
        for r in range(0, hh, BLOCK):
            rows.append([da.from_delayed(dask.delayed(read)(level, r, c, min(BLOCK, hh - r), min(BLOCK, ww - c)),
                                         (min(BLOCK, hh - r), min(BLOCK, ww - c)), dtype) for c in range(0, ww, BLOCK)])
        levels.append(da.block(rows))
        if max(hh, ww) <= 2048:
            return levels
        level += 1


def _objects(parquet: str, transform, max_polygons: int):
    import pyarrow.parquet as pq
    import shapely

    inv = world_to_pixel(transform)
    f = pq.ParquetFile(parquet)
    n = f.metadata.num_rows
    polys, classes, cents = [], [], []
    for rb in f.iter_batches(batch_size=50_000, columns=["class", "geometry"]):
        geoms = shapely.from_wkb(rb.column("geometry").to_numpy(zero_copy_only=False))
        cls = rb.column("class").to_numpy(zero_copy_only=False).astype(str)
        if n > max_polygons:
            c = shapely.get_coordinates(shapely.centroid(geoms))
            col, row = inv.a * c[:, 0] + inv.b * c[:, 1] + inv.c, inv.d * c[:, 0] + inv.e * c[:, 1] + inv.f
            cents.append(np.stack([row - 0.5, col - 0.5], axis=1))
            classes.extend(cls.tolist())
            continue
        parts, idx = shapely.get_parts(geoms, return_index=True)
        for g, i in zip(parts, idx.tolist()):
            xy = shapely.get_coordinates(shapely.get_exterior_ring(g))[:-1]
            col, row = inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c, inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f
            polys.append(np.stack([row - 0.5, col - 0.5], axis=1))  # napari: pixel i is centred on i
            classes.append(cls[i])
    return n, polys, (np.concatenate(cents) if cents else None), classes


def add_scene_layers(viewer, summary: dict, max_polygons: int = MAX_POLYGONS) -> None:
    """Add the image (lazy, multiscale) and the objects of one run to a napari viewer (or ViewerModel)."""

    stem = Path(summary["outputs"]["parquet"]).name[: -len(".parquet")]
    source = summary.get("source") or {}
    try:
        # The input at its own (full) resolution, through the reader the run used (GDAL, OpenSlide, OME-TIFF,
        # OME-Zarr): its size and transform, not the run's working grid (a run may have read a pyramid level or
        # resampled; the objects are in full-resolution coordinates).
        # the same cached instance the lazy reads use (_source_read): opened once, closed with the process
        src = open_source(summary["input"], reader=source.get("reader") or "auto", series=source.get("series"), cache=True)
        bands = src.count
        transform = tuple(src.transform)[:6]  # the reader places an image without georeferencing (PIXEL_TRANSFORM)
    except (SeamlineError, OSError):
        raise InputError(f"seamline view: the input {summary['input']} of this run cannot be read any more; "
                         "restore it (the objects are in the outputs, the pixels are not)") from None
    pct = summary.get("stats", {}).get("percentiles") or [[0, 1]] * bands
    try:
        names = ("red", "green", "blue") if bands >= 3 else ("gray",)
        for b, cmap in enumerate(names):
            levels = _lazy_levels(src, b, (summary["input"], source.get("reader") or "auto", source.get("series")))
            lo, hi = pct[min(b, len(pct) - 1)]
            viewer.add_image(levels if len(levels) > 1 else levels[0], multiscale=len(levels) > 1, name=f"{stem} band {b + 1}" if bands > 1 else stem,
                             colormap=cmap, blending="additive", contrast_limits=(float(lo), float(max(hi, lo + 1e-6))))
    except SeamlineError:
        raise InputError(f"seamline view: the input {summary['input']} of this run cannot be read any more; "
                         "restore it (the objects are in the outputs, the pixels are not)") from None
    colours = class_colours(model_classes(str(summary.get("model", {}).get("path", "classical"))),
                            (summary.get("counts_per_class") or {}).keys())
    n, polys, cents, classes = _objects(summary["outputs"]["parquet"], transform, max_polygons)
    edge = [np.array([*colours.get(c, (255, 221, 0)), 255]) / 255 for c in classes]
    if cents is not None:
        viewer.add_points(cents, name=f"{stem} objects (centroids: {n:,} > {max_polygons:,})", size=4,
                          face_color=np.array(edge) if edge else "yellow", border_width=0)
    elif polys:
        viewer.add_shapes(polys, shape_type="polygon", name=f"{stem} objects", edge_color=np.array(edge),
                          face_color="transparent", edge_width=1.5, features={"class": classes})


def view(target: str, screenshot: str | None = None, max_polygons: int = MAX_POLYGONS) -> str | None:
    """Open the run in napari (blocks until the window closes), or save a screenshot of it and return."""
    summary = find_summary(target)
    try:
        import napari
    except ImportError:
        raise SeamlineError(f"seamline view needs napari, which is not installed: {INSTALL_HINT}") from None
    viewer = napari.Viewer(title=f"Seamline: {Path(target).name}")
    try:
        add_scene_layers(viewer, summary, max_polygons)
        viewer.reset_view()
        if screenshot:
            from qtpy.QtWidgets import QApplication

            QApplication.processEvents()  # let the canvas draw once before grabbing it
            viewer.screenshot(str(screenshot), canvas_only=True, flash=False)
            return str(screenshot)
        napari.run()
        return None
    finally:
        viewer.close()
