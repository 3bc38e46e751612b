"""Writing the change rows of ``seamline diff``: ``<new stem>.changes.parquet`` and ``.gpkg``, batch by batch.

The same conventions as the run's own outputs (:mod:`pipeline.io.outputs`, whose GeoParquet metadata and
GeoPackage helpers are reused): GeoParquet 1.1 with WKB geometry, a ``bbox`` covering column, zstd, row
groups of at most ``ROW_GROUP`` rows in the order the strips come (south to north or north to south: a
spatial order), the CRS as PROJJSON (the engineering pixel CRS for images without georeferencing); a
GeoPackage 1.2 layer ``changes`` with a spatial index and a default QGIS style, one colour per ``change``
(:data:`pipeline.io.palette.CHANGE_COLOURS`). Files are written into a :class:`~pipeline.io.publish.Staging`
folder; nothing appears under a final name before the JSON summary is published.
"""

from __future__ import annotations

import os
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pyproj
import shapely

from pipeline.io.outputs import _geo_metadata, _gpkg_undefined_cartesian, _write_gpkg
from pipeline.io.palette import CHANGE_COLOURS
from pipeline.io.publish import Staging
from pipeline.io.qgis_style import add_default_style
from pipeline.io.scene import PIXEL_CRS_WKT
from pipeline.io.schema import ROW_GROUP

__all__ = ["ChangesWriter", "LAYER", "SCHEMA_COLUMNS"]

LAYER = "changes"
_INT = ["group_id", "old_id", "new_id"]
_STR = ["change", "relation", "class_old", "class_new"]
_FLOAT = ["area_old", "area_new", "area_ratio", "iou", "dx", "dy", "displacement"]
SCHEMA_COLUMNS = ["change", "relation", "group_id", "old_id", "new_id", "class_old", "class_new", "area_old",
                  "area_new", "area_unit", "area_ratio", "iou", "dx", "dy", "displacement"]
_TYPE_NAMES = {3: "Polygon", 6: "MultiPolygon", 7: "GeometryCollection"}


def _schema():
    fields = []
    for c in SCHEMA_COLUMNS:
        t = pa.int64() if c in _INT else pa.float64() if c in _FLOAT else pa.string()
        fields.append((c, t))
    return pa.schema([*fields, ("geometry", pa.binary()),
                      ("bbox", pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")]))])


class ChangesWriter:
    """Accumulates change rows into the staged GeoParquet (via a scratch file: its metadata — bbox, geometry
    types — is known only at the end) and GeoPackage."""

    def __init__(self, staging: Staging, crs, area_unit: str | None):
        self.staging = staging
        self.stem = staging.stem
        self.crs = crs
        self.out_crs = crs if crs is not None else pyproj.CRS.from_wkt(PIXEL_CRS_WKT)
        self.area_unit = area_unit
        self.parquet = staging.path("parquet", f"{self.stem}.parquet")
        self.gpkg = staging.path("gpkg", f"{self.stem}.gpkg")
        self._scratch = os.path.join(staging.dir, ".rows.parquet")
        self._writer = None
        self._first_gpkg = True
        self._types: set[int] = set()
        self._bbox = [np.inf, np.inf, -np.inf, -np.inf]
        self.rows = 0

    def _table(self, c: dict[str, np.ndarray], geometry: np.ndarray):
        n = len(geometry)
        b = shapely.bounds(geometry) if n else np.zeros((0, 4))
        arrays = []
        for name in SCHEMA_COLUMNS:
            if name == "area_unit":
                arrays.append(pa.array([self.area_unit] * n, pa.string()))
            elif name in _INT:
                arrays.append(pa.array(c[name].tolist(), pa.int64()))
            elif name in _FLOAT:
                arrays.append(pa.array(c[name].tolist(), pa.float64()))
            else:
                v = [x if x not in ("", None) else None for x in c[name].tolist()]
                arrays.append(pa.array(v, pa.string()))
        arrays.append(pa.array(shapely.to_wkb(geometry) if n else [], pa.binary()))
        arrays.append(pa.StructArray.from_arrays([pa.array(b[:, i], pa.float64()) for i in range(4)],
                                                 ["xmin", "ymin", "xmax", "ymax"]))
        return pa.Table.from_arrays(arrays, schema=_schema())

    def add(self, cols: dict[str, np.ndarray], geometry: np.ndarray) -> None:
        """Rows: the columns of :data:`SCHEMA_COLUMNS` but ``area_unit`` (object arrays, None where absent), and
        their geometries."""
        if len(geometry) == 0:
            return
        table = self._table(cols, geometry)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._scratch, table.schema, compression="zstd")
        self._writer.write_table(table, row_group_size=ROW_GROUP)
        self._types.update(shapely.get_type_id(geometry).tolist())
        tb = shapely.total_bounds(geometry)
        self._bbox = [min(self._bbox[0], tb[0]), min(self._bbox[1], tb[1]), max(self._bbox[2], tb[2]), max(self._bbox[3], tb[3])]
        self._write_gpkg(table, geometry)
        self.rows += len(geometry)

    def _write_gpkg(self, table, geoms: np.ndarray) -> None:
        df = table.drop_columns(["geometry", "bbox"]).to_pandas()
        for c in _INT:
            df[c] = df[c].astype("Int64")
        gdf = gpd.GeoDataFrame(df, geometry=gpd.GeoSeries(geoms), crs=self.crs)
        opts: dict[str, Any] = {"SPATIAL_INDEX": "YES", "FID": "fid", "GEOMETRY_NAME": "geom"}
        if self.crs is None and pyogrio.__gdal_version__ >= (3, 9, 0):
            opts["SRID"] = "-1"  # as pipeline.io.outputs: blobs and tables agree on the Undefined Cartesian SRS
        _write_gpkg(gdf, self.gpkg, layer=LAYER, driver="GPKG", append=not self._first_gpkg,
                    dataset_options={"VERSION": "1.2"} if self._first_gpkg else None,
                    layer_options=opts if self._first_gpkg else None, geometry_type="Unknown")
        self._first_gpkg = False

    def finish(self) -> dict[str, str]:
        """Close the files: final GeoParquet metadata, the empty layer when there were no rows, the QGIS style."""
        crs_json = self.out_crs.to_json_dict()
        try:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
                src = pq.ParquetFile(self._scratch)
                meta = _geo_metadata(crs_json, sorted(_TYPE_NAMES.get(t, "Unknown") for t in self._types),
                                     [float(v) for v in self._bbox])
                schema = src.schema_arrow.with_metadata({b"geo": meta})
                with pq.ParquetWriter(self.parquet, schema, compression="zstd", write_statistics=True) as w:
                    for g in range(src.metadata.num_row_groups):  # one strip's rows at a time, no read-ahead
                        w.write_table(src.read_row_group(g, use_threads=False).cast(schema), row_group_size=ROW_GROUP)
            else:
                schema = _schema().with_metadata({b"geo": _geo_metadata(crs_json, [], [])})
                pq.write_table(schema.empty_table(), self.parquet, compression="zstd")
                self._write_gpkg(_schema().empty_table(), np.zeros(0, object))
        finally:
            if os.path.exists(self._scratch):
                os.unlink(self._scratch)
        if self.crs is None:
            _gpkg_undefined_cartesian(self.gpkg, LAYER)
        add_default_style(self.gpkg, LAYER, "geom", attribute="change", colours=CHANGE_COLOURS)
        return {"parquet": self.parquet, "gpkg": self.gpkg}
