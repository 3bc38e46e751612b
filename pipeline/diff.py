"""``seamline diff OLD NEW --out DIR``: object-level change between two runs, out of core.

OLD and NEW are GeoParquet files written by ``seamline segment`` (paths or URLs). The driver

1. opens both by their footers only (:class:`pipeline.io.runfile.RunFile`) and picks one working frame
   (:mod:`pipeline.stages.frame`: OLD's CRS when projected, else NEW's, else the local UTM zone; level-0
   pixels for images without georeferencing);
2. estimates the global shift from the objects' positions (bbox centres; :mod:`pipeline.stages.coregister`),
   read strip by strip (two columns), and the common footprint (:mod:`pipeline.stages.footprint`);
3. partitions the common footprint into horizontal strips of about ``strip_objects`` objects. For each
   strip it reads from both files only the row groups whose ``bbox`` statistics meet the strip (plus a
   margin), compares them (:mod:`pipeline.stages.change`), and keeps the rows of the overlap-graph
   components that *start* in the strip (lowest bbox ymin), so each object is decided exactly once. A kept
   component that reaches past the loaded window may be missing members: the strip is read again with twice
   the margin — so the result equals comparing the whole files at once, and memory holds one strip;
4. writes the rows as they come (:mod:`pipeline.io.changes`) and publishes them with the JSON summary last
   (:mod:`pipeline.io.publish`), then the HTML page (:mod:`pipeline.report.changes_page`).

:func:`diff_runs` is the library entry the CLI and ``seamline watch --diff-previous`` call;
:func:`find_previous` (:mod:`pipeline.stages.previous`) picks the earlier run of a scene to diff against.
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Any, Callable

import numpy as np
import shapely

from pipeline import __version__
from pipeline.errors import InputError, ParameterError
from pipeline.io.changes import ChangesWriter
from pipeline.io.publish import Staging
from pipeline.io.runfile import RunFile
from pipeline.memwatch import TreeMemoryWatch
from pipeline.report.changes_page import ChangeMap, write_changes_page
from pipeline.stages.change import CHANGES, ChangeParams, ChangeRows, compare
from pipeline.stages.coregister import Shift, displacement_votes, shift_from_votes
from pipeline.stages.footprint import common_footprint
from pipeline.stages.frame import Frame, area_unit_of, bbox_centres, objects_in, run_scale, working_frame
from pipeline.stages.previous import find_previous

__all__ = ["diff_runs", "find_previous", "Frame", "SHIFT_SAMPLE", "LARGEST"]

SHIFT_SAMPLE = 60_000  # date-1 objects that vote for the shift, spread over the strips
LARGEST = 8  # changes shown as before/after crops


def _check_params(area_change: float, min_iou: float, containment: float, max_shift_px: float, strip_objects: int) -> None:
    if not (area_change > 1.0 and math.isfinite(area_change)):
        raise ParameterError(f"--area-change {area_change}: must be a ratio above 1 (1.3: a change of 30 % in area "
                             "makes an object grown or shrunk)")
    if not 0.0 < min_iou <= 1.0:
        raise ParameterError(f"--min-iou {min_iou}: must be in (0, 1]; 0.1 matches objects that overlap by a tenth")
    if not 0.0 < containment <= 1.0:
        raise ParameterError(f"containment {containment}: must be in (0, 1]; 0.5 = mostly inside")
    if not (max_shift_px >= 0 and math.isfinite(max_shift_px)):
        raise ParameterError(f"--max-shift {max_shift_px}: must be 0 (no shift estimated) or a positive number of pixels")
    if strip_objects < 1000:
        raise ParameterError(f"strip_objects {strip_objects}: too small; use at least 1000 (default 100000)")


def _estimate_shift(old: RunFile, new: RunFile, frame: Frame, bounds, edges, max_shift: float, bin_size: float,
                    area_factor: tuple[float, float], area_change: float) -> Shift:
    """Votes strip by strip (bbox and area columns only), a bounded sample of date-1 objects per strip."""
    rng = np.random.default_rng(0)
    per_strip = max(1, SHIFT_SAMPLE // (len(edges) - 1))
    votes = []
    x0, x1 = bounds[0] - max_shift, bounds[2] + max_shift
    cols = ("bbox", "area")
    for k in range(len(edges) - 1):
        lo, hi = edges[k], edges[k + 1]
        to = old.read_window(*frame.window("old", x0, lo, x1, hi), columns=cols)
        xy_o = frame.points("old", *bbox_centres(to))
        inside = (xy_o[:, 1] >= lo) & (xy_o[:, 1] < hi) & (xy_o[:, 0] >= x0) & (xy_o[:, 0] <= x1) if len(xy_o) else np.zeros(0, bool)
        idx = np.nonzero(inside)[0]
        if len(idx) > per_strip:
            idx = np.sort(rng.choice(idx, per_strip, replace=False))
        if not len(idx):
            continue
        tn = new.read_window(*frame.window("new", x0 - max_shift, lo - max_shift, x1 + max_shift, hi + max_shift), columns=cols)
        xy_n = frame.points("new", *bbox_centres(tn))
        votes.append(displacement_votes(xy_o[idx], to.column("area").to_numpy()[idx] * area_factor[0], xy_n,
                                        tn.column("area").to_numpy() * area_factor[1], max_shift, area_change))
    return shift_from_votes(np.concatenate(votes) if votes else np.zeros((0, 2)), max_shift, bin_size)


def _edges(old: RunFile, new: RunFile, frame: Frame, bounds, strip_objects: int) -> np.ndarray:
    n = old.rows_in(*frame.window("old", *bounds)) + new.rows_in(*frame.window("new", *bounds))
    k = max(1, math.ceil(n / strip_objects))
    return np.linspace(bounds[1], bounds[3], k + 1)


def diff_runs(old: str, new: str, out_dir: str, *, area_change: float = 1.3, min_iou: float = 0.1,
              containment: float = 0.5, max_shift_px: float = 10.0, shift: tuple[float, float] | None = None,
              min_area: float = 0.0,
              strip_objects: int = 100_000, report: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Compare two runs' objects and publish ``<new stem>.changes.{parquet,gpkg,json}`` (+ ``.html``) in
    ``out_dir``; returns the summary (``counts`` per change: what a ledger records).

    ``shift`` (dx, dy in working-frame units) replaces the estimate; ``max_shift_px`` bounds the estimate
    (0: assume none); ``min_area`` (the runs' ``area`` unit): a minimum mapping unit — lone objects, pairs and
    groups smaller than it on both dates are left out (counted, not reported), against fragments that come
    and go between acquisitions. Bad input raises before anything is written.
    """
    _check_params(area_change, min_iou, containment, max_shift_px, strip_objects)
    if not (min_area >= 0 and math.isfinite(min_area)):
        raise ParameterError(f"--min-area {min_area}: must be 0 (keep every object) or a positive area in the runs' "
                             "area unit (m2 for georeferenced runs)")
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    ro = RunFile(old)
    try:
        rn = RunFile(new)
    except BaseException:
        ro.close()
        raise
    try:
        return _diff(ro, rn, out_dir, t0, say, area_change, min_iou, containment, max_shift_px, shift, min_area,
                     strip_objects, report)
    finally:
        ro.close()
        rn.close()


def _diff(ro: RunFile, rn: RunFile, out_dir: str, t0: float, say, area_change: float, min_iou: float,
          containment: float, max_shift_px: float, shift, min_area: float, strip_objects: int, report: bool) -> dict:
    timings: dict[str, float] = {}
    with TreeMemoryWatch() as mem:
        frame = working_frame(ro, rn)
        fo, src_o = ro.footprint()
        fn, src_n = rn.footprint()
        fo, fn = frame.geoms("old", np.array([fo]))[0], frame.geoms("new", np.array([fn]))[0]
        px_o, af_o, ext_o = run_scale(ro, frame, "old")
        px_n, af_n, ext_n = run_scale(rn, frame, "new")
        pixel = max(px_o, px_n) or 1.0
        rough = fo.intersection(fn)
        if rough.is_empty or rough.area <= 0:
            max_s = max_shift_px * pixel
            if fo.distance(fn) > max_s:
                raise InputError(_no_overlap(ro, rn, fo, fn, frame))
        if shift is not None:
            est = Shift(float(shift[0]), float(shift[1]), 0, estimated=False)
        elif max_shift_px == 0:
            est = Shift(0.0, 0.0, 0, estimated=False)
        else:
            b = fo.intersection(fn.buffer(max_shift_px * pixel)).bounds
            est = _estimate_shift(ro, rn, frame, b, _edges(ro, rn, frame, b, strip_objects), max_shift_px * pixel,
                                  pixel / 2, (af_o, af_n), area_change)
        timings["shift"] = time.perf_counter() - t0
        say(f"shift {est.dx:+.3g}, {est.dy:+.3g} ({est.dx / pixel:+.2f}, {est.dy / pixel:+.2f} px) from {est.votes} object pairs")

        tol = est.length + 2 * pixel
        fp = common_footprint(fo, shapely.affinity.translate(fn, -est.dx, -est.dy), tol)
        if fp.area.is_empty or fp.inner.is_empty:
            raise InputError(_no_overlap(ro, rn, fo, fn, frame))
        compare_classes = _compare_classes(ro, rn)
        params = ChangeParams(area_change, min_iou, containment, compare_classes, min_area)
        bounds = fp.area.bounds
        edges = _edges(ro, rn, frame, bounds, strip_objects)
        margin = 2 * max(ext_o, ext_n) + tol
        with Staging(out_dir, f"{rn.stem}.changes") as staging:
            writer = ChangesWriter(staging, frame.crs, _area_unit(ro))
            stats = _Stats(bounds)
            retries = 0
            t1 = time.perf_counter()
            for k in range(len(edges) - 1):
                lo = -np.inf if k == 0 else edges[k]
                hi = np.inf if k == len(edges) - 2 else edges[k + 1]
                m = margin
                while True:
                    win = (bounds[0] - m, edges[k] - m, bounds[2] + m, edges[k + 1] + m)
                    rows = compare(objects_in(ro, frame, "old", win, est), objects_in(rn, frame, "new", win, est), est, fp, params)
                    e = rows.extent
                    own = (e[:, 1] >= lo) & (e[:, 1] < hi)
                    eo = e[own]
                    if ((eo[:, 0] >= win[0]) & (eo[:, 1] >= win[1]) & (eo[:, 2] <= win[2]) & (eo[:, 3] <= win[3])).all():
                        break
                    m *= 2
                    retries += 1
                kept = rows.take(np.nonzero(own)[0])
                small = kept.cols["small"].astype(bool)
                stats.add_small(kept.take(np.nonzero(small)[0]))
                kept = kept.take(np.nonzero(~small)[0])
                writer.add(kept.cols, kept.geometry)
                stats.add(kept)
                say(f"strip {k + 1}/{len(edges) - 1}: {len(kept)} rows")
            timings["match"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            writer.finish()
            timings["write"] = time.perf_counter() - t2
            summary = {
                "seamline_version": __version__,
                "kind": "changes",
                "old": _run_info(ro, src_o, "old", stats),
                "new": _run_info(rn, src_n, "new", stats),
                "crs": frame.crs.to_json_dict() if frame.crs is not None else None,
                "crs_name": frame.crs.name if frame.crs is not None else "level-0 image pixels",
                "area_unit": _area_unit(ro),
                "parameters": {"area_change": area_change, "min_iou": min_iou, "containment": containment,
                               "max_shift_px": max_shift_px, "min_area": min_area, "compare_classes": compare_classes,
                               "shift_given": shift is not None},
                "shift": est.as_dict(pixel),
                "footprint": {**fp.as_dict(), "area_unit": area_unit_of(frame.crs), "source": {"old": src_o, "new": src_n}},
                **stats.as_dict(),
                "partition": {"strips": len(edges) - 1, "retries": retries, "strip_objects": strip_objects},
            }
            if report:
                t3 = time.perf_counter()
                write_changes_page(staging, summary, stats.top(), stats.map, ro, rn, frame, est, pixel)
                timings["report"] = time.perf_counter() - t3
            timings["total"] = time.perf_counter() - t0
            summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
            summary["peak_rss_process_tree_mb"] = round(max(mem.peak_bytes, mem.sample()) / 2**20, 1)
            summary = staging.publish(summary)
    return summary



def _area_unit(rf: RunFile) -> str | None:
    t = rf.sample(n=1, columns=("area_unit",))
    return t.column("area_unit")[0].as_py() if t is not None and t.num_rows else None


def _compare_classes(ro: RunFile, rn: RunFile) -> bool:
    """Classes are compared when the runs name classes in common and one of them has more than one."""
    co, cn = ro.classes(), rn.classes()
    return bool(co & cn) and (len(co) > 1 or len(cn) > 1)


def _no_overlap(ro: RunFile, rn: RunFile, fo, fn, frame: Frame) -> str:
    unit = frame.crs.name if frame.crs is not None else "pixels"
    f = lambda b: "(" + ", ".join(f"{v:.6g}" for v in b) + ")"  # noqa: E731
    return (f"no common footprint: {ro.url} covers {f(fo.bounds)} and {rn.url} covers {f(fn.bounds)} in {unit}; "
            "diff two runs of the same place")


def _run_info(rf: RunFile, source: str, which: str, stats: "_Stats") -> dict:
    inside = stats.objects[which]
    small = stats.small[which]
    return {"url": rf.url, "stem": rf.stem, "crs": rf.crs.name if rf.crs is not None and not rf.is_pixel else "pixels",
            "objects": rf.num_rows, "compared": inside, "below_min_area": small,
            "outside_footprint": rf.num_rows - inside - small,
            "footprint_source": source, "input": (rf.summary or {}).get("input")}


class _Stats:
    """Counts and area totals per change (and per class), relations, and the largest changes, row batch by batch."""

    def __init__(self, bounds: tuple[float, float, float, float]):
        self.map = ChangeMap(bounds)
        self.counts: dict[str, int] = {}
        self.area: dict[str, list[float]] = {}
        self.per_class: dict[str, dict[str, int]] = {}
        self.relations: dict[str, int] = {}
        self.objects = {"old": 0, "new": 0}
        self.small = {"old": 0, "new": 0}
        self.largest: list[tuple[float, int, dict]] = []
        self._n = 0

    def add_small(self, rows: ChangeRows) -> None:
        """Rows left out as smaller than the minimum area: counted per date, not reported."""
        self.small["old"] += sum(v is not None for v in rows.cols["old_id"])
        self.small["new"] += sum(v is not None for v in rows.cols["new_id"])

    def add(self, rows: ChangeRows) -> None:
        c = rows.cols
        ch = c["change"].astype(str)
        ao = np.array([v if v is not None else 0.0 for v in c["area_old"]], float)
        an = np.array([v if v is not None else 0.0 for v in c["area_new"]], float)
        has_o = np.array([v is not None for v in c["old_id"]], bool)
        has_n = np.array([v is not None for v in c["new_id"]], bool)
        self.objects["old"] += int(has_o.sum())
        self.objects["new"] += int(has_n.sum())
        cls = np.where(has_n, c["class_new"], c["class_old"]).astype(str)
        for name in np.unique(ch).tolist():
            s = ch == name
            self.counts[name] = self.counts.get(name, 0) + int(s.sum())
            t = self.area.setdefault(name, [0.0, 0.0])
            t[0] += float(ao[s].sum())
            t[1] += float(an[s].sum())
            pc = self.per_class
            for cl, n in zip(*np.unique(cls[s], return_counts=True)):
                pc.setdefault(str(cl), {})[name] = pc.get(str(cl), {}).get(name, 0) + int(n)
        if len(rows):
            cent = shapely.centroid(rows.geometry)
            self.map.add(ch, shapely.get_x(cent), shapely.get_y(cent))
        rel = np.array([x or "" for x in c["relation"]], dtype=object).astype(str)
        for name, n in zip(*np.unique(rel[rel != ""], return_counts=True)):
            self.relations[str(name)] = self.relations.get(str(name), 0) + int(n)
        changed = np.nonzero(np.isin(ch, ["new", "gone", "grown", "shrunk"]))[0]
        for r in changed.tolist():
            size = abs(an[r] - ao[r])
            item = {k: (v[r].item() if hasattr(v[r], "item") else v[r]) for k, v in c.items()}
            item["bounds"] = list(shapely.bounds(rows.geometry[r]))
            self._n += 1
            entry = (size, -self._n, item)
            if len(self.largest) < LARGEST:
                heapq.heappush(self.largest, entry)
            elif entry > self.largest[0]:
                heapq.heapreplace(self.largest, entry)

    def top(self) -> list[dict]:
        return [e[2] for e in sorted(self.largest, reverse=True)]

    def as_dict(self) -> dict:
        counts = {k: self.counts.get(k, 0) for k in CHANGES}
        return {"counts": counts, "changed": sum(counts[k] for k in ("new", "gone", "grown", "shrunk", "class-changed")),
                "area": {k: {"old": v[0], "new": v[1]} for k, v in sorted(self.area.items())},
                "counts_per_class": {k: dict(sorted(v.items())) for k, v in sorted(self.per_class.items())},
                "relations": dict(sorted(self.relations.items())), "largest": self.top()}
