"""The files of a review package (:mod:`pipeline.training.review`) other than the GeoPackage: the window
images, the QuPath annotations of a slide's windows, and the README that tells the user what to do.

QuPath (File › Import objects / Export objects as GeoJSON) keeps ``properties.objectType``,
``classification`` and ``isLocked``. The outlines to correct are written as *annotations* — QuPath lets a
user reshape, delete and draw annotations, while detections are meant to stay as computed — and each window
as a locked annotation of class ``Review window``, which :func:`read_qupath_annotations` leaves out.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.io.palette import class_colours

__all__ = ["write_cog", "write_qupath_annotations", "read_qupath_annotations", "write_package_readme", "WINDOW_CLASS"]

WINDOW_CLASS = "Review window"


def write_cog(path: Path, data: np.ndarray, transform, crs_wkt: str | None) -> None:
    """A window of the scene as a Cloud-Optimized GeoTIFF (deflate) on the scene's CRS; a plain tiled TIFF in
    pixel coordinates when the scene has no georeferencing. Written under a temporary name, then renamed."""
    import rasterio

    c, h, w = data.shape
    tmp = path.with_name(f".{path.name}.part")
    prof: dict[str, Any] = {"width": w, "height": h, "count": c, "dtype": data.dtype.name, "compress": "DEFLATE"}
    if crs_wkt and transform is not None:
        prof |= {"driver": "COG", "crs": crs_wkt, "transform": transform}
    else:
        prof |= {"driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256}
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **prof) as ds:
                ds.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_qupath_annotations(path: Path, objs, windows: list[dict[str, Any]]) -> None:
    """The objects of the windows (``objs``: geometries in QuPath's pixels, x = column, y = row) as editable
    QuPath annotations, and the windows as locked ones."""
    from shapely.geometry import box, mapping

    classes = sorted({str(c) for c in objs["class"]}) if "class" in objs else ["object"]
    colours = class_colours(classes)
    feats = []
    # by column, not itertuples: "class" is a Python keyword, which itertuples renames to a positional field
    names = objs["class"].astype(str) if "class" in objs else ["object"] * len(objs)
    scores = objs["score"].astype(float) if "score" in objs else [1.0] * len(objs)
    for geom, cls, score, win in zip(objs.geometry, names, scores, objs["window"]):
        feats.append({"type": "Feature", "id": str(uuid.uuid4()), "geometry": mapping(geom),
                      "properties": {"objectType": "annotation", "classification": {"name": cls, "color": list(colours[cls])},
                                     "measurements": {"Score": float(score), "Window": int(win)}}})
    for w in windows:
        px_box = box(w["col"], w["row"], w["col"] + w["width"], w["row"] + w["height"])
        feats.append({"type": "Feature", "id": str(uuid.uuid4()), "geometry": mapping(px_box),
                      "properties": {"objectType": "annotation", "name": w["name"], "isLocked": True,
                                     "classification": {"name": WINDOW_CLASS, "color": [0, 200, 255]}}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}) + "\n")


def read_qupath_annotations(path: Path):
    """The polygons of a QuPath GeoJSON export (pixel coordinates), without the review windows."""
    import geopandas as gpd
    from shapely.geometry import shape

    if not path.is_file():
        raise InputError(f"adapt --from-review: {path} not found; export the edited objects from QuPath "
                         "(File › Export objects as GeoJSON) to that name")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"adapt --from-review: {path} is not JSON ({exc.msg} at line {exc.lineno}); export it again "
                         "from QuPath as GeoJSON") from None
    feats = doc.get("features", doc if isinstance(doc, list) else [])
    geoms, classes = [], []
    for f in feats:
        props = f.get("properties") or {}
        cls = (props.get("classification") or {}).get("name", "object")
        if cls == WINDOW_CLASS or f.get("geometry") is None:
            continue
        g = shape(f["geometry"])
        if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty:
            geoms.append(g)
            classes.append(cls)
    return gpd.GeoDataFrame({"class": classes}, geometry=geoms)


def write_package_readme(path: Path, rec: dict[str, Any]) -> None:
    """What to do with the package, in the order a user does it."""
    n = len(rec["windows"])
    if rec["kind"] == "map":
        steps = [
            "1. Open QGIS and drag `review.gpkg` into it (both layers: `objects`, `windows`), then the images in "
            "`windows/` (one Cloud-Optimized GeoTIFF per window, full resolution, on the scene's CRS).",
            "2. Zoom to a window (right-click the `windows` layer › Open Attribute Table, select a row, *Zoom to "
            "selection*). Windows are sorted by `uncertainty`: start with `w000`.",
            "3. Toggle editing on the `objects` layer and correct the outlines **inside the windows**: delete "
            "false objects (roads, bare soil, cars), reshape wrong outlines (Vertex tool), split merged roofs, "
            "and add missed buildings (Add Polygon Feature). Save the layer edits.",
            "4. In each window every outline you leave is taken as truth and everything else as background, "
            "so check each window completely. A window you did not check: delete its row from the `windows` "
            "layer (it is then left out).",
        ]
    else:
        steps = [
            "1. Open the scene in QuPath, then File › Import objects… › `objects.qupath.geojson`: the outlines "
            "to check (annotations) and the windows (locked annotations of class `Review window`).",
            "2. In each window, delete false objects, reshape wrong ones (brush/wand or Edit › Unlock), draw "
            "missed ones with the class of the others.",
            "3. File › Export objects as GeoJSON… (all objects, *Export as FeatureCollection*) to "
            "`objects.qupath.geojson` in this folder, replacing it.",
            "4. In each window every outline you leave is truth and everything else background: check each "
            "window completely.",
        ]
    text = "\n".join([
        f"# Review package: {n} windows of `{Path(rec['scene']).name}`",
        "",
        f"Made by `seamline review` from the run `{rec['run']}` (model `{rec['model']}`). The windows are where "
        "the run is least sure: objects with low scores (the run's lowest quarter), implausible sizes (far from "
        "the run's typical object) or shapes (solidity under 0.6), and objects the run's quality check marked "
        "`doubtful` (beyond the model's training domain). Each object's `flag` says which.",
        "",
        *steps,
        "",
        "Then fine-tune on your corrections:",
        "",
        "```bash",
        f"seamline adapt --from-review {path.parent} --out MY_MODEL --minutes 10",
        "```",
        "",
        "It holds out a share of the windows (`--holdout`, default 0.2), reports F1 at IoU 0.5 before and after "
        "on the windows it trained on and on the held-out ones, and writes the checkpoint `MY_MODEL/MY_MODEL.safetensors` + `.json` (use `--model MY_MODEL`) with its card "
        "(`MY_MODEL/CARD.md`). Run the same command again to continue an interrupted run.",
        "",
    ])
    path.write_text(text)
