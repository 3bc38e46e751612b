"""``seamline review``: a QGIS-ready package of the windows where a run is least sure, to correct and train on.

The correction loop of local mapping (HOT's fAIr): run the model, fix its worst outputs by hand, fine-tune on
the fixes, run again. A user cannot check 10,000 outlines, so the package holds only ``windows`` squares of
the scene, those whose objects look least trustworthy:

* a **low score** (the mean foreground probability of the object: a shadow, a courtyard, a road patch gets
  0.5–0.7 where a clear roof gets 0.9), counted as ``1 − score`` (flagged when in the run's lowest quarter);
* an **implausible size** (the area's log more than 2.5 robust standard deviations — median absolute
  deviation × 1.4826 — from the run's median: fragments of a roof, blobs over a block);
* an **implausible shape** (solidity under 0.6: a blob that follows a road or joins roofs);
* the run's own per-object ``doubtful`` flag (:func:`pipeline.stages.quality.doubtful_objects`: larger than
  the training domain's objects, or a score below the validation 1st percentile), when the run has it.

Each object contributes ``1 − score``, plus 1 per implausibility; a window's uncertainty is the sum over the objects whose
centre it holds, so a window with many doubtful objects (the most to gain per minute of editing) comes first.

The package (``OUT``): ``review.gpkg`` with the editable layer ``objects`` (whole predicted outlines of those
windows; fields ``score``, ``area``, ``flag``, ``window``) and the layer ``windows`` (extents, ``uncertainty``,
``image``); ``windows/wNNN.tif``, the image of each window (a COG on the scene's CRS, full resolution);
``review.json`` (scene, run, model, windows: what ``seamline adapt --from-review`` reads) and ``README.md``.
For an image without georeferencing (a slide), the same objects are also ``objects.qupath.geojson``
(annotations in full-resolution pixels) for QuPath, and that file is the truth read back.

After editing, :func:`review_samples` turns each window into a training sample: the edited outlines are the
truth there, and everything else in the window is background.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.errors import InputError, ParameterError
from pipeline.io.qgis_style import add_default_style
from pipeline.io.scene import ground_pixel_size
from pipeline.io.sources import open_source
from pipeline.training.places import place_sample
from pipeline.training.reviewfiles import (
    read_qupath_annotations,
    write_cog,
    write_package_readme,
    write_qupath_annotations,
)
from pipeline.training.samples import Sample, normalised

__all__ = ["review", "review_samples", "object_uncertainty", "truth_digest"]

ROBUST_Z = 2.5
MIN_SOLIDITY = 0.6


def object_uncertainty(gdf) -> tuple[np.ndarray, np.ndarray]:
    """Per object: its uncertainty (``1 − score`` plus 1 per flag) and its flags (``low score``, ``size``,
    ``shape``, ``doubtful``, joined by ``+``; empty when none)."""
    score = gdf["score"].to_numpy(np.float64) if "score" in gdf else np.ones(len(gdf))
    area = gdf["area"].to_numpy(np.float64) if "area" in gdf else gdf.geometry.area.to_numpy()
    la = np.log(np.maximum(area, 1e-12))
    med = np.median(la) if len(la) else 0.0
    mad = 1.4826 * np.median(np.abs(la - med)) if len(la) else 0.0
    size = np.abs(la - med) > ROBUST_Z * max(mad, 0.1)
    shape = gdf["solidity"].to_numpy(np.float64) < MIN_SOLIDITY if "solidity" in gdf else np.zeros(len(gdf), bool)
    low = score < np.quantile(score, 0.25) if len(score) else np.zeros(0, bool)
    doubt = gdf["doubtful"].to_numpy(bool) if "doubtful" in gdf else np.zeros(len(gdf), bool)
    flags = np.array(["+".join(n for n, f in (("low score", lo), ("size", si), ("shape", sh), ("doubtful", dq)) if f)
                      for lo, si, sh, dq in zip(low, size, shape, doubt)], dtype=object)
    return (1.0 - score) + size + shape + doubt, flags


def _run_files(run: str) -> tuple[dict[str, Any], Path]:
    """The summary and GeoParquet of ``RUN_DIR/STEM``."""
    base = Path(run)
    summary_p, parquet = base.with_name(base.name + ".json"), base.with_name(base.name + ".parquet")
    for p in (summary_p, parquet):
        if not p.is_file():
            raise InputError(f"review: {p} not found; pass RUN_DIR/STEM of a finished seamline segment run "
                             "(the folder given to --out and the scene's stem)")
    return json.loads(summary_p.read_text()), parquet


def review(run: str, out: str | Path, windows: int = 30, window_m: float = 64.0, window_px: int = 512) -> dict[str, Any]:
    """Write the review package of the run ``RUN_DIR/STEM`` into ``out``; returns its ``review.json`` record."""
    import geopandas as gpd
    import pandas as pd
    from rasterio.transform import Affine
    from shapely.geometry import box

    if windows < 1:
        raise ParameterError(f"review: --windows {windows}: expected at least 1 window, e.g. 30")
    summary, parquet = _run_files(run)
    gdf = gpd.read_parquet(parquet)
    if gdf.empty:
        raise InputError(f"review: {parquet} holds no object; there is nothing to review (run with another model?)")
    src = open_source(summary["input"])
    try:
        georef = bool(src.crs_wkt)
        tf = Affine(*src.transform[:6])
        if georef:
            gsd = ground_pixel_size(src.crs_wkt, tuple(src.transform[:6]), src.width, src.height)
            size = max(32, int(round(window_m / math.sqrt(gsd[0] * gsd[1]))))
        else:
            size = window_px
        cent = gdf.geometry.representative_point()
        col, row = ~tf * (cent.x.to_numpy(), cent.y.to_numpy())
        cell = (np.floor(np.asarray(row) / size).astype(np.int64), np.floor(np.asarray(col) / size).astype(np.int64))
        unc, flags = object_uncertainty(gdf)
        gdf = gdf.assign(flag=flags, uncertainty=unc, cell_r=cell[0], cell_c=cell[1])
        per = gdf.groupby(["cell_r", "cell_c"])["uncertainty"].agg(["sum", "count"]).sort_values("sum", ascending=False)
        chosen = per.head(windows)
        out = Path(out)
        (out / "windows").mkdir(parents=True, exist_ok=True)
        wins, keep = [], []
        for i, ((r, c), rowv) in enumerate(chosen.iterrows()):
            y0, x0 = int(r) * size, int(c) * size
            h, w = min(size, src.height - y0), min(size, src.width - x0)
            if h <= 0 or w <= 0:
                continue
            name = f"w{i:03d}"
            data = src.read(0, y0, x0, h, w)
            wtf = tf * Affine.translation(x0, y0)
            write_cog(out / "windows" / f"{name}.tif", data, wtf if georef else None, src.crs_wkt)
            x_a, y_a = wtf * (0, 0)
            x_b, y_b = wtf * (w, h)
            sel = (gdf.cell_r == r) & (gdf.cell_c == c)
            n_low = int(gdf.loc[sel, "flag"].str.contains("low score").sum())
            n_odd = int(gdf.loc[sel, "flag"].str.contains("size|shape|doubtful").sum())
            wins.append({"window": i, "name": name, "row": y0, "col": x0, "height": h, "width": w,
                         "image": f"windows/{name}.tif", "uncertainty": round(float(rowv["sum"]), 3),
                         "objects": int(rowv["count"]), "low_score": n_low, "implausible": n_odd,
                         "bounds": [min(x_a, x_b), min(y_a, y_b), max(x_a, x_b), max(y_a, y_b)]})
            keep.append(gdf[sel].assign(window=i))
    finally:
        src.close()
    crs = gdf.crs if georef else None
    objs = gpd.GeoDataFrame(pd.concat(keep, ignore_index=True), geometry="geometry", crs=crs)
    cols = [c for c in ("object_id", "class", "score", "area", "area_unit", "doubtful", "flag", "window") if c in objs.columns]
    objs = objs[cols + ["geometry"]]
    win_gdf = gpd.GeoDataFrame([{k: v for k, v in w.items() if k != "bounds"} for w in wins],
                               geometry=[box(*w["bounds"]) for w in wins], crs=crs)
    gpkg = out / "review.gpkg"
    gpkg.unlink(missing_ok=True)
    _write_layer(objs, gpkg, "objects", georef)
    _write_layer(win_gdf, gpkg, "windows", georef)
    add_default_style(gpkg, "objects", geometry_column="geom")  # pyogrio names the GPKG geometry column geom
    rec = {"seamline_version": __version__, "scene": summary["input"], "run": str(Path(run).resolve()),
           "model": summary.get("model", {}).get("path"), "kind": "map" if georef else "pixels",
           "crs_wkt": src.crs_wkt, "window_size_px": size, "windows": wins, "objects": len(objs),
           "truth": "review.gpkg:objects" if georef else "objects.qupath.geojson"}
    if not georef:  # QuPath's pixels are (column, row); the run's pixel grid is placed as GDAL does (y = -row)
        inv = ~tf
        to_px = [inv.a, inv.b, inv.d, inv.e, inv.xoff, inv.yoff]
        write_qupath_annotations(out / "objects.qupath.geojson",
                                 objs.set_geometry(objs.geometry.affine_transform(to_px)), wins)
    (out / "review.json").write_text(json.dumps(rec, indent=2) + "\n")
    write_package_readme(out / "README.md", rec)
    return rec


def _write_layer(gdf, path: Path, layer: str, georef: bool) -> None:
    import warnings

    import pyogrio

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        pyogrio.write_dataframe(gdf, path, layer=layer, driver="GPKG", append=path.exists())


def _load_package(folder: Path) -> dict[str, Any]:
    rec_p = folder / "review.json"
    if not rec_p.is_file():
        raise InputError(f"adapt --from-review {folder}: no review.json there; pass the folder written by seamline review")
    return json.loads(rec_p.read_text())


def truth_digest(folder: str | Path) -> str:
    """sha256 of the edited truth file: a run folder of adapt continues only on the same edits."""
    folder = Path(folder)
    rec = _load_package(folder)
    name = "review.gpkg" if rec["kind"] == "map" else "objects.qupath.geojson"
    return hashlib.sha256((folder / name).read_bytes()).hexdigest()


def review_samples(folder: str | Path, pixel_size: float | None, in_channels: int = 3) -> tuple[list[Sample], dict[str, Any]]:
    """One training sample per window of the edited package ``folder``: the edited outlines (clipped to the
    window) are its objects, everything else background. Map windows are resampled to ``pixel_size`` ground
    metres (the model's); pixel windows (slides) are used as they are."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize
    from shapely.geometry import box

    folder = Path(folder)
    rec = _load_package(folder)
    windows = rec["windows"]
    if rec["kind"] == "map":
        truth = gpd.read_file(folder / "review.gpkg", layer="objects")
        left = set(gpd.read_file(folder / "review.gpkg", layer="windows")["name"])  # rows the user deleted: not checked
        windows = [w for w in windows if w["name"] in left]
    else:
        truth = read_qupath_annotations(folder / "objects.qupath.geojson")
    geoms = [g for g in truth.geometry if g is not None and not g.is_empty]
    samples = []
    if not windows:
        raise InputError(f"adapt --from-review {folder}: no window left in the package (the windows layer is empty); "
                         "keep the windows you checked")
    for w in windows:
        with rasterio.open(folder / w["image"]) as ds:
            data, tf, nodata = ds.read(), ds.transform, ds.nodata
            crs = ds.crs
        # map windows: their extent on the scene's CRS; pixel windows: (column, row) like the QuPath file
        win = box(*w["bounds"]) if rec["kind"] == "map" else box(w["col"], w["row"], w["col"] + w["width"], w["row"] + w["height"])
        inside = [g.intersection(win) for g in geoms if g.intersects(win)]
        if rec["kind"] == "map" and pixel_size:
            gsd = ground_pixel_size(crs.to_wkt(), tuple(tf)[:6], data.shape[2], data.shape[1])
            samples.append(place_sample(w["name"], data, tf, crs, nodata, gsd, inside, pixel_size, in_channels))
        else:  # pixel coordinates of the scene: shift to the window's own pixels
            from shapely.affinity import translate

            shapes = [(translate(g, -w["col"], -w["row"]), i + 1) for i, g in enumerate(inside) if not g.is_empty]
            lab = (rasterize(shapes, out_shape=data.shape[1:], fill=0, dtype="int32") if shapes
                   else np.zeros(data.shape[1:], np.int32))
            samples.append(Sample(w["name"], normalised(data, in_channels, nodata), lab, "window"))
    return samples, rec
