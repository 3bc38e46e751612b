"""Stage 8 (report): after the objects are written and before the work folder goes, turn the zarr store and
the GeoParquet file into things people look at — ``<stem>.quicklook.png`` (+ ``<stem>.quicklook.tif`` for a
georeferenced scene) and ``<stem>.html``. Also the batch index page.

A plain function of paths and the run summary, like every stage; it returns the files it wrote so the
summary (written last) lists them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from pipeline.io.palette import class_colours
from pipeline.models.checkpoint import load_metadata
from pipeline.report.crops import crop_windows, render_crops
from pipeline.report.html import histograms, png_data_uri, render_index, render_page, write_text_atomic
from pipeline.report.quicklook import make_quicklook, write_cog, write_png

__all__ = ["run_report", "model_classes", "write_index", "INDEX_NAME"]

INDEX_NAME = "index.html"


def model_classes(model: str) -> list[str] | None:
    """The checkpoint's class list (its order fixes the colours); None for the classical model."""
    if model == "classical":
        return None

    try:
        return list(load_metadata(model).get("classes") or []) or None
    except Exception:  # noqa: BLE001 - colours only; the run already validated the checkpoint
        return None


def run_report(zarr_path: str, out_dir: Path, stem: str, summary: dict, tile: int, classes: list[str] | None,
               nodata=None, parquet: str | None = None, dest: Callable[[str, str], str] | None = None) -> dict[str, str]:
    """Write the quicklook(s) and the HTML report for one scene; returns {output kind: path written}.

    ``parquet``: where the objects are now (default: the summary's final GeoParquet path); ``dest(kind, name)``:
    the local path to write output ``name`` to (default: ``out_dir/name``) — a publishing step (staging
    folder, then copy, JSON last) plugs in here."""

    t0 = time.perf_counter()
    parquet = parquet or summary["outputs"]["parquet"]
    if dest is None:
        def dest(kind: str, name: str) -> str:
            return str(Path(out_dir) / name)
    transform = summary["transform"]
    percentiles = summary["stats"]["percentiles"]
    colours = class_colours(classes, (summary.get("counts_per_class") or {}).keys())
    q = make_quicklook(zarr_path, parquet, transform, percentiles, colours, tile, nodata)
    out: dict[str, str] = {}
    png = write_png(q.image, Path(dest("quicklook_png", f"{stem}.quicklook.png")))
    out["quicklook_png"] = str(png)
    crs = summary.get("crs")
    if crs:
        import pyproj

        out["quicklook_tif"] = str(write_cog(q.image, q.factor, transform, pyproj.CRS.from_json_dict(crs).to_wkt(),
                                             Path(dest("quicklook_tif", f"{stem}.quicklook.tif"))))
    crops = render_crops(crop_windows(q, int(summary["height"]), int(summary["width"]), tile), zarr_path, parquet,
                         transform, percentiles, colours, tile, nodata)
    hist = histograms(parquet, summary.get("area_stats"))
    report_path = Path(dest("report", f"{stem}.html"))
    page_summary = {**summary, "outputs": {**summary["outputs"], **out, "report": str(report_path)}}
    page_summary.setdefault("timings_s", {})
    page_summary["timings_s"] = {**page_summary["timings_s"], "quicklook_and_crops": round(time.perf_counter() - t0, 3)}
    page = render_page(page_summary, stem, colours, hist, q.image, q.factor, crops, png.name)
    out["report"] = str(write_text_atomic(page, report_path))
    return out


def write_index(out_dir: Path, summaries: list[dict]) -> Path:
    """The batch's index page (``index.html``, or ``seamline-index.html`` if a scene is itself called index)."""
    from PIL import Image

    scenes = []
    for s in summaries:
        outs = s.get("outputs") or {}
        if "report" not in outs:
            continue
        thumb = None
        if outs.get("quicklook_png") and Path(outs["quicklook_png"]).exists():
            import numpy as np

            with Image.open(outs["quicklook_png"]) as im:
                im.thumbnail((160, 160))
                thumb = png_data_uri(np.asarray(im.convert("RGB")))
        scenes.append({"stem": Path(outs["report"]).name[:-len(".html")], "report": Path(outs["report"]).name,
                       "objects": s.get("objects", 0), "counts": s.get("counts_per_class"), "thumb": thumb,
                       "seconds": (s.get("timings_s") or {}).get("total", 0)})
    name = "seamline-index.html" if any(sc["stem"] == "index" for sc in scenes) else INDEX_NAME
    return write_text_atomic(render_index(scenes), Path(out_dir) / name)
