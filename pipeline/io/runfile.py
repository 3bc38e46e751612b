"""A published Seamline GeoParquet read by window, never whole: the object source of ``seamline diff``.

Seamline writes its objects in tile order with a GeoParquet 1.1 ``bbox`` covering column, and parquet keeps
min/max statistics of every row group's ``bbox.xmin/ymin/xmax/ymax``. So the extent of each row group is
known from the footer alone, and a window (a strip of the scene) needs only the row groups whose extent
meets it — decoded in batches, rows outside the window dropped batch by batch before any geometry is parsed.

Local paths and fsspec URLs alike (:mod:`pipeline.io.storage`): a remote file is read by range.
The run's JSON summary beside the file (``<stem>.json``), when it describes this file, gives the scene's
footprint (its transform and size); otherwise the footprint is the extent of the objects.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pyproj
import shapely
from pyproj import Transformer

from pipeline.errors import InputError
from pipeline.io import storage

__all__ = ["RunFile", "REQUIRED_COLUMNS", "PIXEL_CRS_NAME"]

REQUIRED_COLUMNS = ["object_id", "class", "area", "area_unit", "area_px", "geometry", "bbox"]
PIXEL_CRS_NAME = "Image pixel grid"  # pipeline.stages.measure.PIXEL_CRS_WKT: images without georeferencing
BATCH_ROWS = 16_384  # rows decoded at a time when a window is read


class RunFile:
    """One run's GeoParquet: its CRS, row-group extents, footprint, and windowed reads."""

    def __init__(self, url: str):
        self.url = str(url)
        self.stem = storage.name_of(self.url).removesuffix(".parquet")
        self._file = self._open()
        schema = self._file.schema_arrow
        geo = (schema.metadata or {}).get(b"geo")
        missing = [c for c in REQUIRED_COLUMNS if c not in schema.names]
        if geo is None or missing:
            what = "no 'geo' metadata" if geo is None else f"no column(s) {', '.join(missing)}"
            raise InputError(f"{self.url}: not a Seamline GeoParquet ({what}); pass the .parquet that seamline "
                             "segment wrote (DIR/<stem>.parquet)")
        col = json.loads(geo)["columns"]["geometry"]
        if col.get("encoding", "WKB").upper() != "WKB":
            raise InputError(f"{self.url}: geometry encoding {col.get('encoding')!r}, expected WKB; write it with "
                             "seamline segment or GeoPandas' to_parquet(..., geometry_encoding='WKB')")
        crs = col.get("crs", "OGC:CRS84")
        self.crs = pyproj.CRS.from_user_input(crs) if crs is not None else None
        self.is_pixel = self.crs is None or (self.crs.name == PIXEL_CRS_NAME and self.crs.type_name.startswith("Engineering"))
        self.num_rows = self._file.metadata.num_rows
        self.extents, self.rows_per_group = self._group_extents()
        self.summary = self._summary()

    def _open(self):
        missing = InputError(f"{self.url}: no such file; pass the .parquet that seamline segment wrote")
        try:
            if storage.is_local(self.url):
                path = storage.local_path(self.url)
                if os.path.isdir(path):
                    raise InputError(f"{self.url}: is a folder; pass the .parquet in it that seamline segment wrote "
                                     "(DIR/<stem>.parquet)")
                if not os.path.isfile(path):
                    raise missing
                return pq.ParquetFile(path)
            fs, p = storage.fs_path(self.url)
            if not fs.exists(p):
                raise missing
            return pq.ParquetFile(fs.open(p, "rb"))
        except pa.ArrowInvalid as exc:
            msg = str(exc).splitlines()[0][:160]
            raise InputError(f"{self.url}: not a parquet file ({msg}); pass the GeoParquet that seamline segment "
                             "wrote (DIR/<stem>.parquet)") from None
        except OSError as exc:
            raise storage.storage_error(self.url, exc, "reading") from None

    # -- metadata -------------------------------------------------------------------------------------------
    def _group_extents(self) -> tuple[np.ndarray, np.ndarray]:
        """(n, 4) xmin, ymin, xmax, ymax of each row group from the footer statistics (or, if a writer left
        them out, from one pass over the ``bbox`` column)."""
        md = self._file.metadata
        names = [md.schema.column(k).path for k in range(md.num_columns)]
        idx = {p: names.index(f"bbox.{p}") for p in ("xmin", "ymin", "xmax", "ymax")}
        ext = np.empty((md.num_row_groups, 4))
        rows = np.empty(md.num_row_groups, np.int64)
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            rows[g] = rg.num_rows
            st = [rg.column(idx[p]).statistics for p in ("xmin", "ymin", "xmax", "ymax")]
            if all(s is not None and s.has_min_max for s in st):
                ext[g] = [st[0].min, st[1].min, st[2].max, st[3].max]
            else:
                b = self._file.read_row_group(g, columns=["bbox"]).column("bbox").combine_chunks()
                v = [b.field(p).to_numpy(zero_copy_only=False) for p in ("xmin", "ymin", "xmax", "ymax")]
                ext[g] = [v[0].min(initial=np.inf), v[1].min(initial=np.inf), v[2].max(initial=-np.inf), v[3].max(initial=-np.inf)]
        return ext, rows

    def _summary(self) -> dict | None:
        """The run summary beside the file, if it is this file's (same object count)."""
        url = self.url[: -len(".parquet")] + ".json" if self.url.endswith(".parquet") else None
        if url is None:
            return None
        try:
            s = json.loads(storage.read_text(url))
        except (OSError, ValueError):
            return None
        if not isinstance(s, dict) or s.get("objects") != self.num_rows or "transform" not in s:
            return None
        return s

    def footprint(self):
        """(polygon in this file's CRS, source): the scene rectangle from the summary, else the objects' extent."""
        s = self.summary
        if s is not None:
            scrs = pyproj.CRS.from_json_dict(s["crs"]) if s.get("crs") else None
            same = (scrs is None and self.is_pixel) or (scrs is not None and self.crs is not None and scrs == self.crs)
            a, b, c, d, e, f = s["transform"][:6]
            w, h = float(s["width"]), float(s["height"])
            corners = np.array([[0, 0], [w, 0], [w, h], [0, h], [0, 0]], float)
            ring = np.stack([a * corners[:, 0] + b * corners[:, 1] + c, d * corners[:, 0] + e * corners[:, 1] + f], 1)
            poly = shapely.segmentize(shapely.Polygon(ring), max(w, h) * max(abs(a), abs(e)) / 32)
            if same:
                return shapely.normalize(poly), "summary"
            if scrs is not None and self.crs is not None:  # this file was reprojected: bring the rectangle along

                tr = Transformer.from_crs(scrs, self.crs, always_xy=True)
                return shapely.transform(poly, lambda xy: np.stack(tr.transform(xy[:, 0], xy[:, 1]), 1)), "summary"
        ext = self.extents
        if len(ext) == 0 or not np.isfinite(ext).all():
            return shapely.Polygon(), "empty"
        return shapely.box(ext[:, 0].min(), ext[:, 1].min(), ext[:, 2].max(), ext[:, 3].max()), "objects"

    def classes(self) -> set[str]:
        """The class names in the file (one column read row group by row group)."""
        found: set[str] = set()
        for g in range(self._file.metadata.num_row_groups):
            found.update(x for x in self._file.read_row_group(g, columns=["class"]).column("class").unique().to_pylist() if x is not None)
        return found

    def sample(self, n: int = 2000, columns: tuple[str, ...] = ("area_px", "geometry")):
        """The first ``n`` rows of the middle row group (a cheap, typical sample)."""
        if self._file.metadata.num_row_groups == 0:
            return None
        g = self._file.metadata.num_row_groups // 2
        return self._file.read_row_group(g, columns=list(columns)).slice(0, n)

    # -- windows --------------------------------------------------------------------------------------------
    def groups_in(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        e = self.extents
        return np.nonzero((e[:, 0] <= x1) & (e[:, 2] >= x0) & (e[:, 1] <= y1) & (e[:, 3] >= y0))[0]

    def rows_in(self, x0: float, y0: float, x1: float, y1: float) -> int:
        """Upper bound of the rows in a window: the rows of its row groups."""
        return int(self.rows_per_group[self.groups_in(x0, y0, x1, y1)].sum())

    def read_window(self, x0: float, y0: float, x1: float, y1: float,
                    columns: tuple[str, ...] = ("object_id", "class", "area", "geometry", "bbox")):
        """The rows whose bbox meets the window (this file's CRS), as one pyarrow table (empty if none).

        Row groups are decoded in batches of ``BATCH_ROWS`` and filtered batch by batch, so memory holds the
        rows kept, never a whole row group (Seamline writes up to 100,000 rows per group)."""
        cols = list(dict.fromkeys([*columns, "bbox"]))
        groups = self.groups_in(x0, y0, x1, y1).tolist()
        parts = []
        if groups:
            for rb in self._file.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, columns=cols):
                b = rb.column("bbox")
                sel = pc.and_(pc.and_(pc.less_equal(pc.struct_field(b, "xmin"), x1), pc.greater_equal(pc.struct_field(b, "xmax"), x0)),
                              pc.and_(pc.less_equal(pc.struct_field(b, "ymin"), y1), pc.greater_equal(pc.struct_field(b, "ymax"), y0)))
                kept = rb.filter(sel)
                if kept.num_rows:
                    parts.append(kept)
        if not parts:
            return self._file.schema_arrow.empty_table().select(cols)
        return pa.Table.from_batches(parts)

    def close(self) -> None:
        self._file.close()
