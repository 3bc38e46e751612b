"""The page of ``seamline diff``: ``<new stem>.changes.html``, one self-contained file like the run report.

Counts and areas per change, the estimated shift, the common footprint, a map of where the changes are
(drawn while the strips were compared, :class:`ChangeMap`), and before/after crops of the largest changes:
each run's own image, read by window through the project's readers (when the input named in the run's
summary can still be opened; otherwise the outlines alone on black), stretched with that run's own
percentiles (so a brighter date looks alike), with that run's objects outlined — the changed object in its
change colour, the others grey. Same styles, palette and no-script, no-network rules as
:mod:`pipeline.report.html`.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine
from PIL import Image, ImageDraw
from scipy.ndimage import maximum_filter

from pipeline.io.palette import CHANGE_COLOURS, hex_colour
from pipeline.io.sources import open_source
from pipeline.report.html import CSS, png_data_uri, write_text_atomic
from pipeline.report.render import iter_outlines, stretch, to_rgb

__all__ = ["ChangeMap", "write_changes_page", "CROP_PX"]

CROP_PX = 280  # display size of each before/after crop
MAP_PX = 720  # long side of the change map
_PRIORITY = ["gone", "new", "grown", "shrunk", "class-changed", "edge"]
OTHERS = (60, 140, 255)  # the other objects in a crop: thin, blue (readable on grey, white and green)


class ChangeMap:
    """Where the changes are: per cell of a small grid over the footprint, the rows of each change."""

    def __init__(self, bounds: tuple[float, float, float, float]):
        x0, y0, x1, y1 = bounds
        self.bounds = bounds
        span = max(x1 - x0, y1 - y0) or 1.0
        self.cell = span / MAP_PX
        self.shape = (max(1, int(np.ceil((y1 - y0) / self.cell))), max(1, int(np.ceil((x1 - x0) / self.cell))))
        self.grid = {k: np.zeros(self.shape, np.int32) for k in ["same", *_PRIORITY]}

    def add(self, change: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        c = np.clip(((x - self.bounds[0]) / self.cell).astype(np.int64), 0, self.shape[1] - 1)
        r = np.clip(((self.bounds[3] - y) / self.cell).astype(np.int64), 0, self.shape[0] - 1)
        for k, g in self.grid.items():
            s = change == k
            np.add.at(g, (r[s], c[s]), 1)

    def image(self) -> np.ndarray:
        """Same objects as grey (brighter where denser), every change as a dot in its colour on top."""
        img = np.full((*self.shape, 3), 25, np.uint8)
        same = self.grid["same"]
        if same.max(initial=0) > 0:
            v = (60 + 100 * np.sqrt(same / same.max())).astype(np.uint8)
            img[same > 0] = np.repeat(v[same > 0][:, None], 3, axis=1)
        for k in reversed(_PRIORITY):
            dot = maximum_filter(self.grid[k] > 0, size=3)
            img[dot] = CHANGE_COLOURS[k]
        return img


def _e(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    s = f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"
    return f"{s} {unit}".strip()


def _crop(rf, frame, which: str, win: tuple[float, float, float, float], ids: set[int], change: str) -> np.ndarray:
    """One run's picture of a working-frame window: its image (if it opens) and its objects' outlines."""
    fx0, fy0, fx1, fy1 = frame.window(which, *win)
    s = rf.summary or {}
    bg = None
    inv = ~Affine(fx1 - fx0, 0, fx0, 0, -(fy1 - fy0), fy1)  # file CRS → unit square (fallback: no image)
    scale_xy = (1.0 / CROP_PX, 1.0 / CROP_PX)
    if s.get("input") and s.get("transform"):
        try:
            bg, inv, scale_xy = _image_window(s, (fx0, fy0, fx1, fy1))
        except Exception:  # noqa: BLE001 - the picture is optional: the input may have moved or be unreadable
            bg = None
    if bg is None:
        img = Image.new("RGB", (CROP_PX, CROP_PX), (0, 0, 0))
    else:
        img = Image.fromarray(bg).resize((CROP_PX, CROP_PX), Image.NEAREST if bg.shape[0] < CROP_PX else Image.LANCZOS)
    draw = ImageDraw.Draw(img)
    t = rf.read_window(fx0, fy0, fx1, fy1, columns=("object_id", "geometry"))
    geoms = shapely.from_wkb(t.column("geometry").to_numpy(zero_copy_only=False))
    oid = t.column("object_id").to_numpy()
    hit = np.isin(oid, list(ids))
    for sel, colour, width in ((~hit, OTHERS, 1), (hit, CHANGE_COLOURS.get(change, (255, 255, 0)), 3)):
        for _, xy in iter_outlines(geoms[sel], inv, 1.0):
            pts = np.stack([xy[:, 0] / scale_xy[0], xy[:, 1] / scale_xy[1]], 1) - 0.5  # PIL: pixel centres at integers
            if len(pts) >= 2:
                draw.line(pts.ravel().tolist(), fill=colour, width=width)
    return np.asarray(img)


def _image_window(s: dict, bounds: tuple[float, float, float, float]):
    """(RGB pixels, file CRS → read-window pixel affine, window pixels per display pixel (x, y)) for a window
    of the run's input, read at the pyramid level closest to the display size."""
    src_info = s.get("source") or {}
    scale = float(src_info.get("scale", 1.0) or 1.0)
    t0 = Affine(*s["transform"][:6]) * Affine.scale(1.0 / scale)  # level-0 pixels → file CRS
    inv0 = ~t0
    xs, ys = zip(*[inv0 * (x, y) for x in (bounds[0], bounds[2]) for y in (bounds[1], bounds[3])])
    c0, c1, r0, r1 = min(xs), max(xs), min(ys), max(ys)
    with open_source(s["input"], src_info.get("reader", "auto") or "auto", src_info.get("series")) as src:
        lv_i = 0
        for k, lv in enumerate(src.levels):
            if (c1 - c0) / lv.downsample >= CROP_PX:
                lv_i = k
        lv = src.levels[lv_i]
        d = lv.downsample  # the level's pixel window covering the level-0 region; the part inside the level is read
        r, c = math.floor(r0 / d), math.floor(c0 / d)
        h, w = max(1, math.ceil(r1 / d) - r), max(1, math.ceil(c1 / d) - c)
        ri, ci = max(r, 0), max(c, 0)
        hi, wi = min(r + h, lv.height) - ri, min(c + w, lv.width) - ci
        names = [n.lower() for n in src.channel_names]
        used = [names.index(str(n).lower()) for n in src_info.get("channels_used") or [] if str(n).lower() in names]
        pct = (s.get("stats") or {}).get("percentiles")
        rgb = np.zeros((h, w, 3), np.uint8)  # black beyond the image's edge
        if hi > 0 and wi > 0:
            block = src.read(lv_i, ri, ci, hi, wi, used or None)
            rgb[ri - r:ri - r + hi, ci - c:ci - c + wi] = to_rgb(stretch(block, pct or [[float(block.min()), float(block.max())]]))
    # file CRS → window pixels of this level: level-0 pixels, minus the window origin, divided by the downsample
    inv = Affine.scale(1.0 / d) * Affine.translation(-c * d, -r * d) * inv0
    return rgb, inv, (w / CROP_PX, h / CROP_PX)


def _caption(item: dict, unit: str) -> str:
    o, n = item.get("old_id"), item.get("new_id")
    if o is None:
        return f"object #{n} of the second date, {_fmt(item.get('area_new'), unit)}"
    if n is None:
        return f"object #{o} of the first date, {_fmt(item.get('area_old'), unit)}"
    rel = f", {item['relation']}" if item.get("relation") not in (None, "", "pair") else ""
    return (f"#{o} → #{n}: {_fmt(item.get('area_old'), unit)} → {_fmt(item.get('area_new'), unit)} "
            f"(×{item['area_ratio']:.2f}{rel}), IoU {item['iou']:.2f}")


def _window(bounds: list[float], pixel: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = bounds
    side = max(x1 - x0, y1 - y0) * 1.8 + 16 * pixel
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def write_changes_page(staging, summary: dict, top: list[dict], change_map: ChangeMap | None, ro, rn, frame,
                       shift, pixel: float) -> str:
    """Stage ``<stem>.html`` (kind ``report``) and return its path."""
    path = staging.path("report", f"{staging.stem}.html")
    crops = []
    for item in top:
        win = _window(item["bounds"], pixel)
        shifted = (win[0] + shift.dx, win[1] + shift.dy, win[2] + shift.dx, win[3] + shift.dy)
        before = _crop(ro, frame, "old", win, {item["old_id"]} if item.get("old_id") is not None else set(), item["change"])
        after = _crop(rn, frame, "new", shifted, {item["new_id"]} if item.get("new_id") is not None else set(), item["change"])
        crops.append((item, before, after))
    names = {k: n for k, n in staging.entries.items()}
    page = render_changes_page({**summary, "outputs": names}, crops, change_map.image() if change_map is not None else None)
    write_text_atomic(page, Path(path))
    return path


def render_changes_page(summary: dict, crops: list, overview: np.ndarray | None) -> str:
    old, new = summary["old"], summary["new"]
    unit = summary.get("area_unit") or ""
    counts = summary["counts"]
    areas = summary.get("area", {})
    rows = "".join(
        f'<tr><td><span class="sw" style="border-color:{hex_colour(CHANGE_COLOURS[k])}"></span>{_e(k)}</td>'
        f'<td class="n">{counts.get(k, 0):,}</td><td class="n">{_fmt(areas.get(k, {}).get("old"), unit)}</td>'
        f'<td class="n">{_fmt(areas.get(k, {}).get("new"), unit)}</td></tr>' for k in CHANGE_COLOURS)
    sh = summary["shift"]
    shift_line = (f"{sh['dx']:+.3g}, {sh['dy']:+.3g} ({sh.get('dx_px', 0):+.2f}, {sh.get('dy_px', 0):+.2f} px) from "
                  f"{sh['votes']:,} object pairs" if sh["estimated"] else
                  ("given" if summary["parameters"].get("shift_given") else "not estimated") + f": {sh['dx']:+.3g}, {sh['dy']:+.3g}")
    fp = summary["footprint"]
    params = summary["parameters"]
    info = [("before", f"{old['stem']} ({old['objects']:,} objects, {old['outside_footprint']:,} outside the common footprint)"),
            ("after", f"{new['stem']} ({new['objects']:,} objects, {new['outside_footprint']:,} outside the common footprint)"),
            ("compared in", summary.get("crs_name", "")),
            ("shift of the second date", shift_line),
            ("common footprint", f"{_fmt(fp['area'])} {fp.get('area_unit', '')}, bounds {', '.join(f'{v:.8g}' for v in fp['bounds'])} "
                                 f"(scene extents from the runs' {fp['source']['old']} / {fp['source']['new']})"),
            ("grown / shrunk at", f"area ratio ≥ {params['area_change']:g} / ≤ 1/{params['area_change']:g}; matched at IoU ≥ "
                                  f"{params['min_iou']:g}; split/merge members ≥ {params['containment']:g} inside"),
            ("splits and merges", ", ".join(f"{k}: {v:,}" for k, v in summary.get("relations", {}).items()) or "—")]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>Seamline changes: {_e(old['stem'])} → {_e(new['stem'])}</title>",
        f"<style>{CSS} .pair{{display:flex;gap:6px}} .pair img{{width:{CROP_PX}px;height:{CROP_PX}px;border:1px solid #ccc;image-rendering:pixelated}}</style></head><body>",
        f"<h1>{_e(old['stem'])} → {_e(new['stem'])}: {summary.get('changed', 0):,} changed objects</h1>",
        f'<p class="muted">Seamline {_e(summary.get("seamline_version", ""))} change report: objects matched one to one '
        "by overlap after removing the shift; each object of either date inside the common footprint is in one row.</p>",
        "<h2>Changes</h2><table><tr><th>change</th><th>rows</th><th>area before</th><th>area after</th></tr>" + rows + "</table>",
        "<h2>Comparison</h2><table>" + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in info) + "</table>",
    ]
    pc = summary.get("counts_per_class") or {}
    if len(pc) > 1:
        head = "".join(f"<th>{_e(k)}</th>" for k in CHANGE_COLOURS)
        body = "".join(f"<tr><td>{_e(c)}</td>" + "".join(f'<td class="n">{v.get(k, 0):,}</td>' for k in CHANGE_COLOURS) + "</tr>"
                       for c, v in pc.items())
        parts.append(f"<h2>Per class</h2><table><tr><th>class</th>{head}</tr>{body}</table>")
    if overview is not None:
        parts.append("<h2>Where</h2>"
                     f'<figure><img class="ql" id="changemap" alt="map of the changes" src="{png_data_uri(overview)}">'
                     "<figcaption>The common footprint, north up: unchanged objects grey (brighter where denser), "
                     "each change a dot in its colour</figcaption></figure>")
    if crops:
        parts.append("<h2>Largest changes, before | after</h2><p class=\"muted\">Each run's own image and "
                     "objects (the change in its colour, the others thin blue); the after crop is moved by the "
                     "estimated shift, so the two show the same ground.</p><div class=\"crops\">")
        for item, before, after in crops:
            cap = f"<b>{_e(item['change'])}</b> " + _e(_caption(item, unit))
            parts.append(f'<figure><div class="pair"><img alt="before" src="{png_data_uri(before)}">'
                         f'<img alt="after" src="{png_data_uri(after)}"></div><figcaption>{cap}</figcaption></figure>')
        parts.append("</div>")
    outs = summary.get("outputs") or {}
    timings = summary.get("timings_s") or {}
    if timings:
        parts.append("<h2>Time</h2><table>" + "".join(f'<tr><td>{_e(k)}</td><td class="n">{v:.2f} s</td></tr>'
                                                     for k, v in timings.items()) + "</table>")
    parts.append("<h2>Inputs</h2><ul>" + "".join(f"<li>{_e(r['url'])}</li>" for r in (old, new)) + "</ul>")
    if outs:
        parts.append("<h2>Outputs</h2><ul>" + "".join(f'<li>{_e(k)}: <a href="{_e(Path(v).name)}">{_e(Path(v).name)}</a></li>'
                                                   for k, v in outs.items()) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
