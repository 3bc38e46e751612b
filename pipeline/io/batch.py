"""The batch table: one row per scene of an output folder (``summary.parquet`` + ``.csv``).

What a biologist compares across slides — object count, tissue area, objects per mm², timings — whether
each slide finished (``status`` ``ok`` or ``failed`` with the one-line error; ``skipped`` when its outputs were
already current), and whether to trust it (``quality``: ``ok``, ``doubtful`` or ``unreliable``, with its
``quality_reasons``; a scene the quality gate refused is ``failed`` with its verdict). Calls into the same folder accumulate: earlier rows are kept and a scene's row is replaced
by its newest (keyed by output stem). Each file is one atomic object, so a reader never sees half a table;
two calls finishing at the same instant into one folder can lose one call's rows (the last writer wins).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.io import storage

__all__ = ["batch_row", "failed_row", "write_batch_summary", "BATCH_COLUMNS"]

BATCH_COLUMNS = ["input", "stem", "status", "error", "quality", "quality_reasons", "objects", "tissue_area", "tissue_area_unit", "objects_density",
                 "objects_density_unit", "width", "height", "megapixels", "seconds_total", "megapixels_per_s",
                 "seconds_ingest", "seconds_tiles", "seconds_stitch", "seconds_label_image", "seconds_write",
                 "model", "skipped", "parquet"]


def batch_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The row of a finished scene, from its run summary."""
    t = summary.get("timings_s", {})
    return {
        "input": summary["input"], "stem": Path(summary["outputs"]["parquet"]).stem, "status": "ok", "error": None,
        "quality": (summary.get("quality") or {}).get("verdict"),
        "quality_reasons": "; ".join((summary.get("quality") or {}).get("reasons") or []) or None,
        "objects": summary["objects"], "tissue_area": summary.get("tissue_area"),
        "tissue_area_unit": summary.get("tissue_area_unit"), "objects_density": summary.get("objects_density"),
        "objects_density_unit": summary.get("objects_density_unit"), "width": summary["width"],
        "height": summary["height"], "megapixels": summary["width"] * summary["height"] / 1e6,
        "seconds_total": t.get("total"), "megapixels_per_s": summary.get("megapixels_per_s"),
        "seconds_ingest": t.get("ingest_and_stats"), "seconds_tiles": t.get("tiles"), "seconds_stitch": t.get("stitch"),
        "seconds_label_image": t.get("label_image"), "seconds_write": t.get("write"),
        "model": summary.get("model", {}).get("spec"), "skipped": bool(summary.get("skipped")),
        "parquet": summary["outputs"]["parquet"],
    }


def failed_row(input_path: str, stem: str, error: str, quality: str | None = None) -> dict[str, Any]:
    """The row of a scene that failed; ``quality``: the verdict when the quality gate refused to publish it."""
    row: dict[str, Any] = dict.fromkeys(BATCH_COLUMNS)
    row.update({"input": input_path, "stem": stem, "status": "failed", "error": error, "quality": quality, "skipped": False})
    return row


def write_batch_summary(out_dir: str | Path, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Write ``summary.parquet`` and ``summary.csv`` into ``out_dir`` (with the rows already there whose stem
    this batch did not run); returns their paths."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    url = storage.join(str(out_dir), "summary.parquet")
    if storage.exists(url):
        try:
            old = storage.read_parquet(url).to_pylist()
        except (OSError, ValueError, pa.ArrowException):
            old = []  # an unreadable table is replaced, not merged
        mine = {r["stem"] for r in rows}
        rows = [{c: r.get(c) for c in BATCH_COLUMNS} for r in old if r.get("stem") not in mine] + rows
    types = {c: pa.string() for c in BATCH_COLUMNS}
    types.update({c: pa.float64() for c in BATCH_COLUMNS if c.startswith("seconds_") or c in
                  ("tissue_area", "objects_density", "megapixels", "megapixels_per_s")})
    types.update({"objects": pa.int64(), "width": pa.int64(), "height": pa.int64(), "skipped": pa.bool_()})
    table = pa.table({c: pa.array([r.get(c) for r in rows], types[c]) for c in BATCH_COLUMNS})
    import io

    finals = {"parquet": storage.join(str(out_dir), "summary.parquet"), "csv": storage.join(str(out_dir), "summary.csv")}
    pbuf, cbuf = io.BytesIO(), io.BytesIO()
    pq.write_table(table, pbuf, compression="zstd")
    pacsv.write_csv(table, cbuf)
    # Each one atomic object (locally: temp name + rename; object store: one PUT): never half a file.
    storage.write_bytes(finals["parquet"], pbuf.getvalue())
    storage.write_bytes(finals["csv"], cbuf.getvalue())
    return {k: str(v) for k, v in finals.items()}
