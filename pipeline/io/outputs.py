"""Stage 7 (write): the whole objects (:mod:`pipeline.stages.assemble`) into GeoParquet, GeoPackage and QuPath
GeoJSON, one batch at a time: memory stays bounded by a batch. Every file is staged (:mod:`pipeline.io.publish`)
and becomes final only when all are complete, so a failed run leaves no file under a final name.

* GeoParquet 1.1: WKB geometry, a ``bbox`` covering struct column, zstd, ≤ 100k rows per row group,
  CRS as PROJJSON (for an image without georeferencing an engineering CRS, never omitted: omitted means lon/lat).
* GeoPackage 1.2 (read by old and new QGIS/GDAL alike), layer ``objects``, spatial index, lowercase names;
  for an image without georeferencing the layer uses the "Undefined Cartesian SRS" (srs_id -1).
"""

from __future__ import annotations

import json
import os
import sqlite3
import warnings
from typing import Any, Iterable

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import shapely

from pipeline.io.palette import class_colours
from pipeline.io.publish import Staging
from pipeline.io.qgis_style import add_default_style
from pipeline.io.qupath import GeoJSONWriter
from pipeline.io.scene import SceneInfo, scene_crs
from pipeline.io.schema import OUTPUT_COLUMNS, ROW_GROUP, ObjectBatch, channel_columns, channel_names

__all__ = ["write_outputs", "OUTPUT_COLUMNS"]



def _geo_metadata(crs_json: dict, types: list[str], bbox: list[float]) -> bytes:
    return json.dumps({
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {"geometry": {
            "encoding": "WKB", "geometry_types": types, "crs": crs_json, "bbox": bbox, "edges": "planar",
            "covering": {"bbox": {"xmin": ["bbox", "xmin"], "ymin": ["bbox", "ymin"], "xmax": ["bbox", "xmax"], "ymax": ["bbox", "ymax"]}},
        }},
    }).encode()


def _arrow_batch(rows: dict[str, np.ndarray], geoms: np.ndarray, extra: list[str]):
    import shapely

    b = shapely.bounds(geoms)
    cols = {c: rows[c] for c in OUTPUT_COLUMNS}
    table = pa.table({
        "object_id": pa.array(cols["object_id"], pa.int64()),
        "class": pa.array(cols["class"], pa.string()),
        "score": pa.array(cols["score"], pa.float32()),
        "doubtful": pa.array(np.asarray(cols["doubtful"], bool), pa.bool_()),
        "area_px": pa.array(cols["area_px"], pa.int64()),
        "area": pa.array(cols["area"], pa.float64()),
        "area_unit": pa.array(cols["area_unit"], pa.string()),
        "perimeter": pa.array(cols["perimeter"], pa.float64()),
        "perimeter_unit": pa.array(cols["perimeter_unit"], pa.string()),
        "centroid_x": pa.array(cols["centroid_x"], pa.float64()),
        "centroid_y": pa.array(cols["centroid_y"], pa.float64()),
        "tile": pa.array(cols["tile"], pa.int32()),
        **{c: pa.array(np.asarray(rows[c], np.float64), pa.float64()) for c in extra},
        "geometry": pa.array(shapely.to_wkb(geoms), pa.binary()),
        "bbox": pa.StructArray.from_arrays([pa.array(b[:, i], pa.float64()) for i in range(4)], ["xmin", "ymin", "xmax", "ymax"]),
    })
    return table


def write_outputs(batches: Iterable[ObjectBatch], info: SceneInfo, out: Staging, summary: dict[str, Any],
                  measurements: list[str], geojson: bool = False, model_classes: list[str] | None = None,
                  class_name: str = "object") -> dict[str, Any]:
    """Stage ``<stem>.parquet`` and ``<stem>.gpkg`` (and, with ``geojson``, the QuPath ``<stem>.qupath.geojson``:
    :mod:`pipeline.io.qupath`) in ``out`` from the whole objects of the assembly stage (``object_batches``);
    returns the summary with the counts, which ``out.publish`` writes last as ``<stem>.json``
    (:mod:`pipeline.io.publish`). ``measurements``: the columns after the base ones
    (``output_measurements`` of the assembly stage); ``model_classes`` fix the class colours (the GPKG's
    QGIS style and the QuPath classification use the one palette, :mod:`pipeline.io.palette`)."""
    stem = out.stem
    # The QuPath file is named for what it is: its coordinates are pixels, and a plain .geojson beside
    # georeferenced layers is read by QGIS as lon/lat.
    names = {"parquet": f"{stem}.parquet", "gpkg": f"{stem}.gpkg", **({"qupath_geojson": f"{stem}.qupath.geojson"} if geojson else {})}
    tmps = {kind: out.path(kind, name) for kind, name in names.items()}
    staging = os.path.join(out.dir, ".rows.parquet")  # local scratch: GPKG (SQLite) and parquet need a file
    crs = scene_crs(info)
    channels = channel_names(info)
    colours = class_colours(model_classes, [class_name])
    per_class: dict[str, list] = {}  # class -> [count, total area]
    n_obj = 0
    areas: list[np.ndarray] = []
    area_unit = "px"
    types: set[int] = set()
    bbox = [np.inf, np.inf, -np.inf, -np.inf]
    writer = None
    gj = None
    gpkg_layer_options = {"SPATIAL_INDEX": "YES", "FID": "fid", "GEOMETRY_NAME": "geom"}
    if not info.crs_wkt and pyogrio.__gdal_version__ >= (3, 9, 0):
        # GDAL >= 3.9 then writes srs_id -1 into every geometry blob header too; fixing only the metadata
        # tables afterwards leaves blobs saying 99999 ("Undefined SRS"), which breaks GeoPackage Req 33.
        gpkg_layer_options["SRID"] = "-1"
    try:
        first_gpkg = True
        if geojson:
            gj = GeoJSONWriter(tmps["qupath_geojson"], colours)
        for b in batches:
            rows, geoms = b.rows, b.geometry
            n = len(geoms)
            n_obj += n
            areas.append(rows["area"])
            for c in np.unique(rows["class"]).tolist():  # per class (multi-class models fill the class column)
                sel = rows["class"] == c
                tot = per_class.setdefault(str(c), [0, 0.0])
                tot[0] += int(sel.sum())
                tot[1] += float(np.asarray(rows["area"])[sel].sum())
            area_unit = str(rows["area_unit"][0]) if n else area_unit
            table = _arrow_batch(rows, geoms, measurements)
            if gj is not None:
                # QuPath wants full-resolution (level-0) pixels; geoms_px are working pixels (info.scale of them)
                gj_geoms = b.geoms_px if info.scale == 1 else shapely.transform(b.geoms_px, lambda xy: xy * info.scale)
                gj.add(gj_geoms, rows, rows["class"], channels, channel_columns(channels))
            types.update(shapely.get_type_id(geoms).tolist())
            bb = shapely.total_bounds(geoms)
            bbox = [min(bbox[0], bb[0]), min(bbox[1], bb[1]), max(bbox[2], bb[2]), max(bbox[3], bb[3])]
            if writer is None:
                writer = pq.ParquetWriter(staging, table.schema, compression="zstd")
            writer.write_table(table)
            gdf = gpd.GeoDataFrame({c: rows[c] for c in [*OUTPUT_COLUMNS, *measurements]}, geometry=geoms,
                                   crs=crs if info.crs_wkt else None)
            _write_gpkg(
                gdf, tmps["gpkg"], layer="objects", driver="GPKG", append=not first_gpkg,
                dataset_options={"VERSION": "1.2"} if first_gpkg else None,
                layer_options=gpkg_layer_options if first_gpkg else None,
                geometry_type="Unknown" if len(types) > 1 else None,
            )
            first_gpkg = False
        if writer is not None:
            writer.close()
            writer = None
        if gj is not None:
            gj.close()
            gj = None
        if first_gpkg:  # no objects: still write valid, empty files
            empty = gpd.GeoDataFrame({c: [] for c in [*OUTPUT_COLUMNS, *measurements]},
                                     geometry=gpd.GeoSeries([], crs=crs if info.crs_wkt else None))
            _write_gpkg(empty, tmps["gpkg"], layer="objects", driver="GPKG", dataset_options={"VERSION": "1.2"},
                        layer_options=gpkg_layer_options, geometry_type="Polygon")
        if not info.crs_wkt:
            _gpkg_undefined_cartesian(tmps["gpkg"])
        # QGIS opens the layer styled: outline colour per class (layer_styles, useAsDefault)
        add_default_style(tmps["gpkg"], "objects", "geom", model_classes)
        _finish_geoparquet(staging if n_obj else None, tmps["parquet"], crs, types, bbox, measurements)
        all_areas = np.concatenate(areas) if areas else np.zeros(0)
        return {
            **summary,
            "objects": int(n_obj),
            "counts_per_class": {c: v[0] for c, v in sorted(per_class.items())},
            "area_per_class": {c: v[1] for c, v in sorted(per_class.items())},  # in area_unit
            "area_unit": area_unit if n_obj else None,
            "area_stats": _area_stats(all_areas),
            "channels": channels,
            "crs": crs.to_json_dict() if info.crs_wkt else None,
        }
    except BaseException:
        if writer is not None:
            writer.close()
        if gj is not None:
            gj.abort()
        raise
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


_TYPE_NAMES = {3: "Polygon", 6: "MultiPolygon", 7: "GeometryCollection"}


def _finish_geoparquet(staging: str | None, dest: str, crs, types: set[int], bbox: list[float], extra: list[str]) -> None:
    """Copy the staged rows into the final file with complete GeoParquet 1.1 metadata (types and bbox
    are only known once every row is written)."""
    import pyarrow.parquet as pq

    crs_json = crs.to_json_dict()
    if staging is None:
        schema = pa.schema([("object_id", pa.int64()), ("class", pa.string()), ("score", pa.float32()),
                            ("doubtful", pa.bool_()), ("area_px", pa.int64()), ("area", pa.float64()), ("area_unit", pa.string()),
                            ("perimeter", pa.float64()), ("perimeter_unit", pa.string()), ("centroid_x", pa.float64()),
                            ("centroid_y", pa.float64()), ("tile", pa.int32()),
                            *[(c, pa.float64()) for c in extra], ("geometry", pa.binary()),
                            ("bbox", pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")]))])
        schema = schema.with_metadata({b"geo": _geo_metadata(crs_json, [], [])})
        pq.write_table(schema.empty_table(), dest, compression="zstd")
        return
    src = pq.ParquetFile(staging)
    meta = _geo_metadata(crs_json, sorted(_TYPE_NAMES.get(t, "Unknown") for t in types), [float(v) for v in bbox])
    schema = src.schema_arrow.with_metadata({b"geo": meta})
    with pq.ParquetWriter(dest, schema, compression="zstd", write_statistics=True) as w:
        for rb in src.iter_batches(batch_size=ROW_GROUP):
            w.write_table(pa.Table.from_batches([rb]).cast(schema), row_group_size=ROW_GROUP)


def _write_gpkg(gdf, path: str, **kw) -> None:
    """pyogrio's writer; the "no crs" warning is expected for images without georeferencing, whose layer is
    then set to the Undefined Cartesian SRS (see :func:`_gpkg_undefined_cartesian`)."""

    import pyogrio

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        pyogrio.write_dataframe(gdf, path, **kw)


def _gpkg_undefined_cartesian(path: str, layer: str = "objects") -> None:
    """Point the layer at srs_id -1 (GeoPackage's "Undefined Cartesian SRS"), as microscopy pixels are."""
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute("UPDATE gpkg_geometry_columns SET srs_id = -1 WHERE table_name = ?", (layer,))
            con.execute("UPDATE gpkg_contents SET srs_id = -1 WHERE table_name = ?", (layer,))
    finally:
        con.close()


def _area_stats(a: np.ndarray) -> dict[str, float] | None:
    if a.size == 0:
        return None
    q = np.percentile(a, [5, 25, 50, 75, 95])
    return {"min": float(a.min()), "p5": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]),
            "p95": float(q[4]), "max": float(a.max()), "mean": float(a.mean()), "sum": float(a.sum())}


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
