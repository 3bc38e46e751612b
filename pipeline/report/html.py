"""The run report: one self-contained HTML page per scene, and an index page for a batch.

Self-contained means it opens anywhere, offline, as one file: images are inline ``data:`` URIs, charts are
inline SVG, the style sheet is inline, and there is no script at all. Histograms are accumulated from the
GeoParquet file batch by batch, so a scene with millions of objects needs no more memory than a small one.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.io.palette import hex_colour

__all__ = ["histograms", "svg_histogram", "png_data_uri", "render_page", "render_index", "write_text_atomic",
           "quality_banner"]

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0} td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums} .sw{display:inline-block;width:12px;height:12px;border:2px solid;margin-right:6px;vertical-align:middle}
.muted{color:#666} .warn{background:#fff4e0;border-left:4px solid #f0a020;padding:6px 10px;margin:4px 0}
.charts{display:flex;flex-wrap:wrap;gap:24px} figure{margin:8px 0} figcaption{color:#555;font-size:.9em}
img.ql{max-width:100%;height:auto;border:1px solid #ccc;image-rendering:auto} img.crop{border:1px solid #ccc;width:560px;max-width:100%;image-rendering:pixelated}
.crops{display:flex;flex-wrap:wrap;gap:24px} .crops figure{width:560px} .bar{background:#4a7fd0;height:10px;display:inline-block}
.quality{padding:10px 14px;margin:12px 0;border-left:6px solid;font-size:1.05em} .quality ul{margin:6px 0 0 0}
.q-ok{background:#e8f5ea;border-color:#3a9a5b} .q-doubtful{background:#fff4e0;border-color:#f0a020}
.q-unreliable{background:#fde8e8;border-color:#d03030}
"""

#: What each verdict tells the reader (pipeline/stages/quality.py).
QUALITY_TEXT = {"ok": "Quality: ok — the scene and the objects look like the model's training domain.",
                "doubtful": "Quality: doubtful — check the objects before using them.",
                "unreliable": "Quality: unreliable — the model is out of its domain here; do not use these objects as they are."}


def quality_banner(quality: dict | None) -> str:
    """The verdict (:mod:`pipeline.stages.quality`) as the banner at the top of the report."""
    if not quality:
        return ""
    v = str(quality.get("verdict", ""))
    reasons = quality.get("reasons") or []
    items = "".join(f"<li>{_e(r)}</li>" for r in reasons)
    note = f'<div class="muted">{_e(quality["note"])}</div>' if quality.get("note") else ""
    return (f'<div class="quality q-{_e(v)}" id="quality"><b>{_e(QUALITY_TEXT.get(v, v))}</b>'
            f'{f"<ul>{items}</ul>" if items else ""}{note}</div>')


def histograms(parquet_path: str, area_stats: dict | None, bins: int = 30) -> dict[str, Any]:
    """Histograms of ``area`` (log-spaced bins when areas span more than a factor of 50) and ``score``,
    accumulated over the file's batches."""
    import pyarrow.parquet as pq

    lo = float(area_stats["min"]) if area_stats else 0.0
    hi = float(area_stats["max"]) if area_stats else 1.0
    log = lo > 0 and hi / lo > 50
    if hi <= lo:
        hi = lo + 1.0
    a_edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
    s_edges = np.linspace(0.0, 1.0, 21)
    a_counts = np.zeros(bins, np.int64)
    s_counts = np.zeros(len(s_edges) - 1, np.int64)
    for rb in pq.ParquetFile(parquet_path).iter_batches(batch_size=100_000, columns=["area", "score"]):
        a_counts += np.histogram(rb.column("area").to_numpy(), a_edges)[0]
        s_counts += np.histogram(rb.column("score").to_numpy(), s_edges)[0]
    return {"area": (a_edges, a_counts, log), "score": (s_edges, s_counts, False)}


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}"


def svg_histogram(edges: np.ndarray, counts: np.ndarray, xlabel: str, log_x: bool = False,
                  width: int = 520, height: int = 240, colour: str = "#4a7fd0") -> str:
    """A bar chart as inline SVG: bars, count axis, x ticks at the first, middle and last edge."""
    ml, mr, mt, mb = 56, 12, 10, 44
    pw, ph = width - ml - mr, height - mt - mb
    top = max(int(counts.max(initial=0)), 1)
    n = len(counts)
    bw = pw / max(n, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(xlabel)}">',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for i, c in enumerate(counts.tolist()):
        h = ph * c / top
        parts.append(f'<rect x="{ml + i * bw + 0.5:.1f}" y="{mt + ph - h:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                     f'height="{h:.1f}" fill="{colour}"><title>{_fmt(edges[i])}–{_fmt(edges[i + 1])}: {c}</title></rect>')
    for frac in (0.0, 0.5, 1.0):
        y = mt + ph * (1 - frac)
        parts.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{int(round(top * frac))}</text>')
    for k in (0, n // 2, n):
        x = ml + k * bw
        parts.append(f'<line x1="{x:.1f}" y1="{mt + ph}" x2="{x:.1f}" y2="{mt + ph + 4}" stroke="#555"/>'
                     f'<text x="{x:.1f}" y="{mt + ph + 16}" font-size="11" text-anchor="middle">{_fmt(float(edges[k]))}</text>')
    label = xlabel + (" (log scale)" if log_x else "")
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 6}" font-size="12" text-anchor="middle">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def png_data_uri(image: np.ndarray, max_side: int | None = None) -> str:
    """An RGB array as a ``data:image/png;base64,...`` URI (shrunk to ``max_side`` first if larger)."""
    from PIL import Image

    img = Image.fromarray(image)
    if max_side and max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _e(v: Any) -> str:
    return html.escape(str(v))


def _table(rows: Sequence[Sequence[Any]], head: Sequence[str] | None = None, raw: bool = False) -> str:
    h = "<tr>" + "".join(f"<th>{_e(x)}</th>" for x in head) + "</tr>" if head else ""
    body = "".join("<tr>" + "".join(
        f'<td class="n">{x if raw else _e(x)}</td>' if isinstance(x, (int, float)) else f"<td>{x if raw else _e(x)}</td>"
        for x in r) + "</tr>" for r in rows)
    return f"<table>{h}{body}</table>"


def render_page(summary: dict, stem: str, colours: dict, hist: dict, quicklook: np.ndarray | None, factor: int,
                crops: list, quicklook_name: str | None) -> str:
    """The whole page for one scene, from its run summary and the rendered pieces."""
    n = int(summary.get("objects", 0))
    unit = summary.get("area_unit") or "px"
    counts = summary.get("counts_per_class") or {}
    cls_rows = "".join(
        f'<tr><td><span class="sw" style="border-color:{hex_colour(colours.get(c, (0, 0, 0)))}"></span>{_e(c)}</td>'
        f'<td class="n">{k:,}</td><td class="n">{100.0 * k / max(n, 1):.1f}%</td></tr>'
        for c, k in sorted(counts.items(), key=lambda kv: -kv[1]))
    tiling = summary.get("tiling", {})
    tiles_rows = [("tiles in the grid", tiling.get("tiles", "?")), ("processed in this run", summary.get("tiles_processed", 0))]
    skipped = summary.get("tiles_skipped")
    if isinstance(skipped, dict):  # {"tissue": n, "nodata": n, "total": n, ...}: tiles never run through the model
        tiles_rows.append(("skipped (no tissue)", int(skipped.get("tissue", 0))))
        tiles_rows.append(("skipped (all nodata)", int(skipped.get("nodata", 0))))
    elif skipped is not None:
        tiles_rows.append(("skipped", int(skipped)))
    tiles_rows.append(("resumed (done by an earlier run)", summary.get("tiles_resumed", 0)))
    timings = {k: float(v) for k, v in (summary.get("timings_s") or {}).items() if k != "total"}
    tmax = max(timings.values(), default=1.0) or 1.0
    time_rows = [(k.replace("_", " "), f"{v:.2f} s", f'<span class="bar" style="width:{max(1, int(200 * v / tmax))}px"></span>')
                 for k, v in timings.items()]
    warnings = summary.get("warnings") or []
    model = summary.get("model", {})
    px = summary.get("pixel_size_um")
    scene_rows = [("input", summary.get("input", "")), ("size", f"{summary.get('width')} × {summary.get('height')} px, "
                  f"{summary.get('bands')} band(s), {summary.get('dtype')}"),
                  ("georeferenced", "yes" if summary.get("crs") else "no"),
                  ("pixel size", f"{px[0]:g} × {px[1]:g} µm" if px else "—"),
                  ("model", f"{model.get('spec', '')} ({Path(str(model.get('path', ''))).name})"),
                  ("tiles", f"{tiling.get('tile')} px, halo {tiling.get('halo')} px, grid {tiling.get('grid')}")]
    a_edges, a_counts, a_log = hist["area"]
    s_edges, s_counts, _ = hist["score"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No network at all: images only from data: URIs, no scripts, inline styles only.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>Seamline report: {_e(stem)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(stem)}: {n:,} objects</h1>",
        quality_banner(summary.get("quality")),
        f'<p class="muted">Seamline {_e(summary.get("seamline_version", ""))} run report.</p>',
    ]
    if warnings:
        parts.append("<h2>Warnings</h2>" + "".join(f'<div class="warn">{_e(w)}</div>' for w in warnings))
    parts.append("<h2>Objects per class</h2>")
    parts.append(f"<table><tr><th>class</th><th>objects</th><th>share</th></tr>{cls_rows}</table>" if counts else "<p>No objects found.</p>")
    if n:
        parts.append('<div class="charts">'
                     f'<figure>{svg_histogram(a_edges, a_counts, f"area ({unit})", a_log)}<figcaption>Object areas in {_e(unit)}</figcaption></figure>'
                     f'<figure>{svg_histogram(s_edges, s_counts, "score", colour="#3a9a5b")}<figcaption>Scores (mean foreground probability)</figcaption></figure>'
                     "</div>")
    if quicklook is not None:
        link = f' — full size: <a href="{_e(quicklook_name)}">{_e(quicklook_name)}</a>' if quicklook_name else ""
        parts.append("<h2>Quicklook</h2>"
                     f'<figure><img class="ql" id="quicklook" alt="quicklook of {_e(stem)}" src="{png_data_uri(quicklook, 1400)}">'
                     f"<figcaption>The whole scene, 1 px = {factor} × {factor} scene px, outlines in class colours{link}</figcaption></figure>")
    if crops:
        parts.append('<h2>Zoomed crops (full resolution, enlarged 2×)</h2><div class="crops">')
        for cr in crops:
            parts.append(f'<figure><img class="crop" alt="{_e(cr.title)}" src="{png_data_uri(cr.image)}">'
                         f"<figcaption><b>{_e(cr.title)}</b>: {_e(cr.caption)}; {cr.objects} objects drawn</figcaption></figure>")
        parts.append("</div>")
    parts.append("<h2>Tiles</h2>" + _table(tiles_rows))
    parts.append("<h2>Time per stage</h2>" + _table(time_rows, raw=True))
    parts.append("<h2>Scene and run</h2>" + _table(scene_rows))
    outs = summary.get("outputs") or {}
    if outs:
        parts.append("<h2>Outputs</h2><ul>" + "".join(
            f'<li>{_e(k)}: <a href="{_e(Path(v).name)}">{_e(Path(v).name)}</a></li>' for k, v in outs.items()) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_index(scenes: list[dict], title: str = "Seamline batch") -> str:
    """A batch's index page: one row per scene with a thumbnail, counts and a link to its report."""
    rows = []
    for s in scenes:
        thumb = f'<img alt="" src="{s["thumb"]}">' if s.get("thumb") else ""
        counts = ", ".join(f"{k}: {v:,}" for k, v in (s.get("counts") or {}).items()) or "no objects"
        rows.append(f'<tr><td>{thumb}</td><td><a href="{_e(s["report"])}">{_e(s["stem"])}</a></td>'
                    f'<td class="n">{int(s.get("objects", 0)):,}</td><td>{_e(counts)}</td>'
                    f'<td class="n">{float(s.get("seconds", 0)):.1f} s</td></tr>')
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>{_e(title)}</title><style>{CSS} td img{{max-width:160px}}</style></head><body>",
        f"<h1>{_e(title)}: {len(scenes)} scenes</h1>",
        "<table><tr><th></th><th>scene</th><th>objects</th><th>per class</th><th>time</th></tr>" + "".join(rows) + "</table>",
        "</body></html>\n"])


def write_text_atomic(text: str, dest: Path) -> Path:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
