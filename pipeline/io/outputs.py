"""Stage 7: assemble whole objects from the tile pieces and write GeoParquet, GeoPackage and a JSON summary.

Memory stays bounded by one batch of rows: pieces are streamed from the per-tile part files in tile order
(a coarse spatial sort), objects joined across seams are dissolved first (they are few), and rows are
written in batches. Every file is written under a temporary name and renamed into place only when all three
are complete, so a failed run leaves no file under a final name.

* GeoParquet 1.1: WKB geometry, a ``bbox`` covering struct column, zstd, ≤ 100k rows per row group,
  CRS as PROJJSON (for an image without georeferencing an engineering CRS, never omitted: omitted means lon/lat).
* GeoPackage 1.2 (read by old and new QGIS/GDAL alike), layer ``objects``, spatial index, lowercase names;
  for an image without georeferencing the layer uses the "Undefined Cartesian SRS" (srs_id -1).
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Iterator

import numpy as np

from pipeline.stages.measure import measure, output_crs
from pipeline.stages.measure_objects import channel_names, measurement_names, object_columns, scene_density
from pipeline.io.raster import SceneInfo
from pipeline.io import storage
from pipeline.io.publish import Staging
from pipeline.stages.tiles import part_path

__all__ = ["assemble_objects", "write_outputs", "OUTPUT_COLUMNS", "ROW_GROUP"]

ROW_GROUP = 100_000
OUTPUT_COLUMNS = ["object_id", "class", "score", "area_px", "area", "area_unit", "perimeter", "perimeter_unit",
                  "centroid_x", "centroid_y", "tile"]


def _read_part(url: str, columns: list[str] | None = None):
    return storage.read_parquet(url, columns=columns)


_BASE = ["key", "area_px", "score_sum", "geometry"]


def _stat_columns(workdir: str) -> list[str]:
    """The per-piece measurement columns of this run's part files (their scalar ones, and ``class_sums``)."""
    import pyarrow.parquet as pq

    names = storage.read_parquet_schema(part_path(workdir, 0)).names
    return [c for c in names if c not in _BASE and not c.endswith("_values")]


def valid_pixels(workdir: str, n_tiles: int) -> int:
    """Pixels holding image data over the whole scene: the sum of the part files' ``valid_px`` metadata."""
    import pyarrow.parquet as pq

    total = 0
    for t in range(n_tiles):
        md = storage.read_parquet_schema(part_path(workdir, t)).metadata or {}
        total += int(md.get(b"valid_px", b"0"))
    return total


def _piece_rows(table) -> list[dict]:
    """A part table's rows as dicts: scalars as Python values, the pixel-value lists of edge pieces as numpy
    arrays (views of the column), not lists of Python ints (about ten times their size)."""
    lists = [c for c in table.column_names if c.endswith("_values")]
    rows = table.drop_columns(lists).to_pylist()
    for c in lists:
        col = table.column(c).combine_chunks()
        offsets, values = col.offsets.to_numpy(), col.values.to_numpy()
        for row, a, b in zip(rows, offsets[:-1].tolist(), offsets[1:].tolist()):
            row[c] = values[a:b]
    return rows


def _dissolve_groups(workdir: str, groups: dict[int, int]) -> dict[int, tuple[Any, int, float, dict]]:
    """Union the pieces of every joined object and combine their measurements:
    rep key → (pixel polygon, area_px, score_sum, measurements).

    Part files are read in tile order and an object is dissolved as soon as its last piece has been read, so
    only the pieces of objects still open at the current tile (and their pixel values, kept for exact medians)
    are held, not those of every joined object in the scene."""
    import shapely

    if not groups:
        return {}
    keys = np.fromiter(groups.keys(), np.int64, len(groups))
    reps, n_pieces = np.unique(np.fromiter(groups.values(), np.int64, len(groups)), return_counts=True)
    missing = dict(zip(reps.tolist(), n_pieces.tolist()))
    pieces: dict[int, list] = {}
    out = {}
    for tile_index in np.unique(keys >> 32):
        tab = _read_part(part_path(workdir, int(tile_index)))
        k = tab.column("key").to_numpy()
        sel = np.nonzero(np.isin(k, keys))[0]
        sub = tab.take(sel)
        geoms = shapely.from_wkb(sub.column("geometry").to_numpy(zero_copy_only=False))
        for kk, g, row in zip(k[sel].tolist(), geoms, _piece_rows(sub.drop_columns(["geometry"]))):
            rep = groups[kk]
            pieces.setdefault(rep, []).append((g, row))
            missing[rep] -= 1
            if not missing[rep]:
                out[rep] = _dissolve(pieces.pop(rep))
    out.update({rep: _dissolve(ps) for rep, ps in pieces.items()})  # none left unless a piece was missing
    return out


def _dissolve(ps: list) -> tuple[Any, int, float, dict]:
    """One joined object from its pieces ``[(polygon, row), ...]``."""
    import shapely

    from pipeline.stages.measure_objects import combine_pieces

    geom = shapely.union_all([p[0] for p in ps], grid_size=None)
    geom = shapely.normalize(geom)
    if geom.geom_type == "MultiPolygon" and len(geom.geoms) == 1:
        geom = geom.geoms[0]
    rows = [p[1] for p in ps]
    n_ch = sum(1 for c in rows[0] if c.endswith("_values"))
    meas = combine_pieces(rows, n_ch) if "mean_x" in rows[0] else {}
    if "class_sums" in rows[0]:  # a multi-class model: the pieces' class probability sums add up
        meas["class_sums"] = np.sum([r["class_sums"] for r in rows], axis=0)
    return geom, sum(r["area_px"] for r in rows), sum(r["score_sum"] for r in rows), meas


def assemble_objects(workdir: str, n_tiles: int, groups: dict[int, int], batch_rows: int = ROW_GROUP) -> Iterator[dict]:
    """Yield batches of whole objects in tile order: dicts of ``key, geometry (pixel coords), area_px, score_sum,
    tile`` and the measurement columns of :mod:`pipeline.stages.measure_objects`."""
    import shapely

    dissolved = _dissolve_groups(workdir, groups)
    # the measurements, and a multi-class model's class_sums (summed over pieces; argmax in write_outputs)
    stat_cols = _stat_columns(workdir) if n_tiles else []
    names = ["key", "geometry", "area_px", "score_sum", "tile", *stat_cols]
    buf: dict[str, list] = {c: [] for c in names}
    for t in range(n_tiles):
        tab = _read_part(part_path(workdir, t), columns=[*_BASE, *stat_cols])
        if tab.num_rows == 0:
            continue
        keys = tab.column("key").to_numpy()
        geoms = shapely.from_wkb(tab.column("geometry").to_numpy(zero_copy_only=False))
        ap = tab.column("area_px").to_numpy()
        ss = tab.column("score_sum").to_numpy()
        stats = [tab.column(c).to_numpy() if c != "class_sums" else np.asarray(tab.column(c).to_pylist(), np.float64).reshape(tab.num_rows, -1)
                 for c in stat_cols]
        for i, (k, g, a, s) in enumerate(zip(keys.tolist(), geoms, ap.tolist(), ss.tolist())):
            rep = groups.get(k)
            if rep is not None:
                if rep != k:
                    continue
                g, a, s, meas = dissolved[rep]
                vals = [meas[c] for c in stat_cols]
            else:
                vals = [col[i] for col in stats]
            buf["key"].append(k)
            buf["geometry"].append(g)
            buf["area_px"].append(a)
            buf["score_sum"].append(s)
            buf["tile"].append(t)
            for c, v in zip(stat_cols, vals):
                buf[c].append(v)
        if len(buf["key"]) >= batch_rows:
            yield buf
            buf = {k: [] for k in buf}
    if buf["key"]:
        yield buf


def _regularized(geoms_px: np.ndarray, info: SceneInfo, params: dict[str, Any]) -> np.ndarray:
    """Regularise pixel-space polygons with a tolerance given in map units (metres for a projected scene,
    µm for microscopy with a pixel size, else pixels): square pixels make the two equivalent."""
    from pipeline.stages.regularize import regularize_many

    if info.crs_wkt:
        px = float(np.hypot(info.transform[0], info.transform[3]))
    elif info.pixel_size_um:
        px = float(info.pixel_size_um[0])
    else:
        px = 1.0
    return regularize_many(geoms_px, params["tolerance"] / px, params["angle_tolerance"], params["min_iou"])


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
    import pyarrow as pa
    import shapely

    b = shapely.bounds(geoms)
    cols = {c: rows[c] for c in OUTPUT_COLUMNS}
    table = pa.table({
        "object_id": pa.array(cols["object_id"], pa.int64()),
        "class": pa.array(cols["class"], pa.string()),
        "score": pa.array(cols["score"], pa.float32()),
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


def write_outputs(workdir: str, n_tiles: int, groups: dict[int, int], info: SceneInfo, out: Staging,
                  class_name: str, summary: dict[str, Any], geojson: bool = False,
                  regularize: dict[str, Any] | None = None, class_names: list[str] | None = None) -> dict[str, Any]:
    """Stage ``<stem>.parquet`` and ``<stem>.gpkg`` (and, with ``geojson``, the QuPath ``<stem>.geojson``:
    :mod:`pipeline.io.qupath`) in ``out``; returns the summary, which ``out.publish`` writes last as
    ``<stem>.json`` (:mod:`pipeline.io.publish`). ``class_names``: a multi-class model's classes; each object
    gets the one with the largest probability summed over its pixels (else every object is ``class_name``)."""
    from pipeline.io.qupath import GeoJSONWriter
    from pipeline.stages.measure_objects import channel_columns

    import geopandas as gpd
    import pyarrow.parquet as pq
    import pyogrio

    stem = out.stem
    exts = ("parquet", "gpkg", "geojson") if geojson else ("parquet", "gpkg")
    tmps = {ext: out.path(ext, f"{stem}.{ext}") for ext in exts}
    staging = os.path.join(out.dir, ".rows.parquet")  # local scratch: GPKG (SQLite) and parquet need a file
    crs = output_crs(info)
    channels = channel_names(info)
    extra = measurement_names(channels)
    if regularize:  # building outlines squared (pipeline/stages/regularize.py): keep the area before too
        extra = [*extra, "area_raw"]
    per_class: dict[str, list] = {}  # class -> [count, total area]
    next_id = 1
    areas: list[np.ndarray] = []
    area_unit = "px"
    types: set[str] = set()
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
            gj = GeoJSONWriter(tmps["geojson"])
        for batch in assemble_objects(workdir, n_tiles, groups):
            geoms_px = np.array(batch["geometry"], dtype=object)
            n = len(geoms_px)
            if class_names and "class_sums" in batch and n:
                sums = np.asarray(batch["class_sums"], np.float64).reshape(n, -1)
                cls = np.asarray(class_names, dtype=object)[sums.argmax(axis=1)]
            else:
                cls = np.full(n, class_name, dtype=object)
            area_raw = None
            if regularize:
                area_raw = measure(geoms_px, info)["area"]
                sel = np.isin(cls.astype(str), list(regularize["classes"]))
                if sel.any():
                    geoms_px = geoms_px.copy()
                    geoms_px[sel] = _regularized(geoms_px[sel], info, regularize)
            m = measure(geoms_px, info)
            area_px = np.asarray(batch["area_px"], np.int64)
            rows = {
                "object_id": np.arange(next_id, next_id + n, dtype=np.int64),
                "class": cls,
                "score": np.clip(np.asarray(batch["score_sum"]) / np.maximum(area_px, 1), 0, 1),
                "area_px": area_px,
                "tile": np.asarray(batch["tile"], np.int32),
                **{k: v for k, v in m.items() if k != "geometry"},
            }
            rows.update(object_columns(batch, geoms_px, m["area"], m["perimeter"], info, channels))
            if area_raw is not None:
                rows["area_raw"] = area_raw
            next_id += n
            areas.append(rows["area"])
            for c in np.unique(rows["class"]).tolist():  # per class (multi-class models fill the class column)
                sel = rows["class"] == c
                tot = per_class.setdefault(str(c), [0, 0.0])
                tot[0] += int(sel.sum())
                tot[1] += float(np.asarray(rows["area"])[sel].sum())
            area_unit = str(rows["area_unit"][0]) if n else area_unit
            table = _arrow_batch(rows, m["geometry"], extra)
            if gj is not None:
                # QuPath wants full-resolution (level-0) pixels; geoms_px are working pixels (info.scale of them)
                gj_geoms = geoms_px if info.scale == 1 else __import__("shapely").transform(geoms_px, lambda xy: xy * info.scale)
                gj.add(gj_geoms, rows, rows["class"], channels, channel_columns(channels))
            import shapely

            types.update(shapely.get_type_id(m["geometry"]).tolist())
            b = shapely.total_bounds(m["geometry"])
            bbox = [min(bbox[0], b[0]), min(bbox[1], b[1]), max(bbox[2], b[2]), max(bbox[3], b[3])]
            if writer is None:
                writer = pq.ParquetWriter(staging, table.schema, compression="zstd")
            writer.write_table(table)
            gdf = gpd.GeoDataFrame({c: rows[c] for c in [*OUTPUT_COLUMNS, *extra]}, geometry=m["geometry"], crs=crs if info.crs_wkt else None)
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
        n_obj = next_id - 1
        if first_gpkg:  # no objects: still write valid, empty files
            empty = gpd.GeoDataFrame({c: [] for c in [*OUTPUT_COLUMNS, *extra]}, geometry=gpd.GeoSeries([], crs=crs if info.crs_wkt else None))
            _write_gpkg(empty, tmps["gpkg"], layer="objects", driver="GPKG", dataset_options={"VERSION": "1.2"},
                                    layer_options=gpkg_layer_options, geometry_type="Polygon")
        if not info.crs_wkt:
            _gpkg_undefined_cartesian(tmps["gpkg"])
        from pipeline.report.qgis_style import add_default_style
        from pipeline.report.stage import model_classes

        # QGIS opens the layer styled: outline colour per class (layer_styles, useAsDefault)
        add_default_style(tmps["gpkg"], "objects", "geom", model_classes(str(summary.get("model", {}).get("path", "classical"))))
        _finish_geoparquet(staging if n_obj else None, tmps["parquet"], crs, types, bbox, extra)
        all_areas = np.concatenate(areas) if areas else np.zeros(0)
        summary = {
            **summary,
            "objects": int(n_obj),
            "counts_per_class": {c: v[0] for c, v in sorted(per_class.items())},
            "area_per_class": {c: v[1] for c, v in sorted(per_class.items())},  # in area_unit
            "area_unit": area_unit if n_obj else None,
            "area_stats": _area_stats(all_areas),
            **scene_density(int(n_obj), valid_pixels(workdir, n_tiles), info, summary.get("tissue_px")),
            "channels": channels,
            "crs": crs.to_json_dict() if info.crs_wkt else None,
        }
        return summary
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    crs_json = crs.to_json_dict()
    if staging is None:
        schema = pa.schema([("object_id", pa.int64()), ("class", pa.string()), ("score", pa.float32()),
                            ("area_px", pa.int64()), ("area", pa.float64()), ("area_unit", pa.string()),
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
    import warnings

    import pyogrio

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        pyogrio.write_dataframe(gdf, path, **kw)


def _gpkg_undefined_cartesian(path: str) -> None:
    """Point the layer at srs_id -1 (GeoPackage's "Undefined Cartesian SRS"), as microscopy pixels are."""
    con = sqlite3.connect(path)
    try:
        with con:
            con.execute("UPDATE gpkg_geometry_columns SET srs_id = -1 WHERE table_name = 'objects'")
            con.execute("UPDATE gpkg_contents SET srs_id = -1 WHERE table_name = 'objects'")
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
