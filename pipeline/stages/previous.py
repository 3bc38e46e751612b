"""Which earlier run a new run of a scene is diffed against (``seamline watch --diff-previous``).

The watcher knows the published summaries of the scenes it has done (``DEST/<stem>.json``, with
``finished_at`` from its ledger); a new version of a scene — the same stem, or a scene whose footprint
overlaps a done one — is compared with the latest of them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyproj
import shapely

from pipeline.io.storage import stem_of
from pipeline.stages.frame import transform_fn

__all__ = ["find_previous"]


def find_previous(new: dict, done: Sequence[dict]) -> dict | None:
    """The run to diff a newly published run against, for ``seamline watch --diff-previous``.

    ``new`` and each of ``done`` are published run summaries (``<stem>.json``: ``input``, ``transform``,
    ``width``, ``height``, ``crs``, ``outputs``); a ``done`` entry may carry ``finished_at`` (ISO time, from the
    ledger) to order them. Candidates are other versions of the same scene: the same stem, else a footprint
    that overlaps ``new``'s (in ``new``'s CRS). Returns the latest such candidate with the same stem, else the
    one overlapping most (latest on a tie), else None. The run itself (same ``input_version``) is skipped.
    """
    stem = stem_of(str(new.get("input", "")))
    ver = new.get("input_version")
    same, overlap = [], []
    fp_new = _summary_footprint(new, new.get("crs"))
    for s in done:
        if ver is not None and s.get("input_version") == ver and s.get("input") == new.get("input"):
            continue
        if stem_of(str(s.get("input", ""))) == stem:
            same.append(s)
            continue
        fp = _summary_footprint(s, new.get("crs"))
        if fp_new is not None and fp is not None:
            a = fp_new.intersection(fp).area
            if a > 0:
                overlap.append((a, s))
    if same:
        return max(same, key=lambda s: str(s.get("finished_at", "")))
    if overlap:
        return max(overlap, key=lambda t: (t[0], str(t[1].get("finished_at", ""))))[1]
    return None


def _summary_footprint(s: dict, crs_json: dict | None):
    """A run summary's scene rectangle in the CRS ``crs_json`` (None: pixels; then only pixel runs compare)."""
    try:
        a, b, c, d, e, f = s["transform"][:6]
        w, h = float(s["width"]), float(s["height"])
    except (KeyError, TypeError, ValueError):
        return None
    xy = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    ring = np.stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f], 1)
    poly = shapely.segmentize(shapely.Polygon(ring), max(w, h) * max(abs(a), abs(e)) / 16)
    src = s.get("crs")
    if (src is None) != (crs_json is None):
        return None
    if src is None or src == crs_json:
        return poly
    tr = pyproj.Transformer.from_crs(pyproj.CRS.from_json_dict(src), pyproj.CRS.from_json_dict(crs_json), always_xy=True)
    return shapely.transform(poly, transform_fn(tr))
