"""Per-object measurements (QuPath / CellProfiler conventions), computed on the workers in the tile stage.

Each tile measures the object *pieces* in its core from the image window already in memory — never a second
pass over the image. What a piece stores combines exactly when the stitch joins pieces into one object:

* pixel count, the mean and the sum of squared deviations (M2) of the pixel-centre coordinates and their
  cross product: second moments combine with Chan's parallel formula (numerically stable), giving the
  covariance of the whole object, hence its axes, eccentricity and orientation (scikit-image ``regionprops``
  definitions: axis length = 4·√eigenvalue of the pixel-centre covariance);
* per channel: sum, M2, min and max (all combine), and the median. A median cannot be combined from
  pieces, so every piece touching its tile core's edge — the only pieces a seam can join — also keeps its
  raw pixel values; a joined object's median is the exact median of its pieces' values together.

Shape features of the final polygon (solidity = area / convex hull area, circularity = 4π·area/perimeter²)
are computed on the whole object at write time (:func:`object_columns`).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.io.scene import scene_crs
from pipeline.io.schema import channel_columns

__all__ = ["piece_measurements", "combine_pieces", "object_columns", "part_stat_columns", "scene_density", "MOMENTS"]

MOMENTS = ["mean_x", "mean_y", "m2_xx", "m2_yy", "m2_xy"]


def _piece_cols(c: int) -> list[str]:
    return [f"i{c}_sum", f"i{c}_m2", f"i{c}_min", f"i{c}_max", f"i{c}_median"]


def piece_measurements(core: np.ndarray, ids: np.ndarray, raw: np.ndarray, row0: int, col0: int) -> dict[str, np.ndarray]:
    """Measurements of every piece in one tile core.

    ``core``: (H, W) labels of the core; ``ids``: the sorted non-zero labels present; ``raw``: (C, H, W) raw
    image values of the core; ``row0``/``col0``: the core's position in the scene. Returns columns for the
    part file (one entry per id): moments, per-channel statistics, ``border`` (piece touches the core's edge)
    and ``i<c>_values`` (that piece's values, sorted; empty unless ``border``) as (offsets, values) pairs.
    """
    out: dict[str, np.ndarray] = {}
    if ids.size == 0:  # same columns, no rows: every part file has one schema
        out.update({k: np.zeros(0) for k in MOMENTS})
        out["border"] = np.zeros(0, bool)
        for c in range(raw.shape[0]):
            out.update({k: np.zeros(0) for k in _piece_cols(c)})
            out[f"i{c}_values"] = (np.zeros(1, np.int64), raw[c].ravel()[:0])
        return out
    m = int(ids[-1]) + 1
    rr, cc = np.nonzero(core)
    lab = core[rr, cc].astype(np.int64)
    n_full = np.bincount(lab, minlength=m).astype(np.float64)
    n = n_full[ids]
    mx = np.bincount(lab, cc, m) / np.maximum(n_full, 1)
    my = np.bincount(lab, rr, m) / np.maximum(n_full, 1)
    dx, dy = cc - mx[lab], rr - my[lab]
    out["mean_x"] = mx[ids] + col0 + 0.5  # pixel centres in scene pixel coordinates
    out["mean_y"] = my[ids] + row0 + 0.5
    out["m2_xx"] = np.bincount(lab, dx * dx, m)[ids]
    out["m2_yy"] = np.bincount(lab, dy * dy, m)[ids]
    out["m2_xy"] = np.bincount(lab, dx * dy, m)[ids]
    edge = np.zeros(m, bool)
    for line in (core[0], core[-1], core[:, 0], core[:, -1]):
        edge[line] = True
    border = edge[ids]
    out["border"] = border
    for c in range(raw.shape[0]):
        v = raw[c][rr, cc]
        order = np.lexsort((v, lab))
        vs, ls = v[order], lab[order]
        starts = np.searchsorted(ls, ids)
        cnt = n.astype(np.int64)
        s = np.bincount(lab, v.astype(np.float64), m)
        mean = s / np.maximum(n_full, 1)
        dv = v.astype(np.float64) - mean[lab]
        out[f"i{c}_sum"] = s[ids]
        out[f"i{c}_m2"] = np.bincount(lab, dv * dv, m)[ids]
        out[f"i{c}_min"] = vs[starts].astype(np.float64)
        out[f"i{c}_max"] = vs[starts + cnt - 1].astype(np.float64)
        out[f"i{c}_median"] = (vs[starts + (cnt - 1) // 2].astype(np.float64) + vs[starts + cnt // 2]) / 2
        keep = border[np.searchsorted(ids, ls)]
        counts = np.where(border, cnt, 0)
        out[f"i{c}_values"] = (np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), vs[keep])
    return out


def combine_pieces(pieces: list[dict], channels: int) -> dict:
    """One object's measurements from its pieces' (each a dict of scalars, ``values`` lists included).

    Moments and intensity M2 combine with Chan et al.'s formula, M2 = Σ M2ᵢ + Σ nᵢ (meanᵢ − mean)²;
    min/max/sum combine directly; the median is taken over all the pieces' values (exact). A piece without
    values (cannot happen for pieces joined across a core edge) makes the median NaN.
    """
    n = np.array([p["area_px"] for p in pieces], np.float64)
    total = n.sum()
    out: dict = {}
    mx = np.array([p["mean_x"] for p in pieces])
    my = np.array([p["mean_y"] for p in pieces])
    cx, cy = float((n * mx).sum() / total), float((n * my).sum() / total)
    out["mean_x"], out["mean_y"] = cx, cy
    out["m2_xx"] = float(sum(p["m2_xx"] for p in pieces) + (n * (mx - cx) ** 2).sum())
    out["m2_yy"] = float(sum(p["m2_yy"] for p in pieces) + (n * (my - cy) ** 2).sum())
    out["m2_xy"] = float(sum(p["m2_xy"] for p in pieces) + (n * (mx - cx) * (my - cy)).sum())
    out["border"] = True
    for c in range(channels):
        s = np.array([p[f"i{c}_sum"] for p in pieces])
        means = s / np.maximum(n, 1)
        mean = s.sum() / total
        out[f"i{c}_sum"] = float(s.sum())
        out[f"i{c}_m2"] = float(sum(p[f"i{c}_m2"] for p in pieces) + (n * (means - mean) ** 2).sum())
        out[f"i{c}_min"] = float(min(p[f"i{c}_min"] for p in pieces))
        out[f"i{c}_max"] = float(max(p[f"i{c}_max"] for p in pieces))
        vals = [p.get(f"i{c}_values") for p in pieces]
        if all(v is not None and len(v) == p["area_px"] for v, p in zip(vals, pieces)):
            out[f"i{c}_median"] = float(np.median(np.concatenate([np.asarray(v, np.float64) for v in vals])))
        else:
            out[f"i{c}_median"] = math.nan
    return out


def _linear_map(info, mean_x: np.ndarray, mean_y: np.ndarray) -> np.ndarray:
    """(n, 2, 2): one pixel step (column, row) in output units, y pointing up (north or image top)."""
    n = len(mean_x)
    a, b, _, d, e, _ = info.transform
    if info.crs_wkt:
        crs = scene_crs(info)
        A = np.array([[a, b], [d, e]], np.float64)
        if crs.is_geographic:  # local metres per degree at the object's latitude
            lat = np.radians(d * mean_x + e * mean_y + info.transform[5])
            r = crs.ellipsoid.semi_major_metre if crs.ellipsoid else 6378137.0
            k = np.pi / 180 * r
            S = np.zeros((n, 2, 2))
            S[:, 0, 0], S[:, 1, 1] = k * np.cos(lat), k
            return S @ A
        f = crs.axis_info[0].unit_conversion_factor or 1.0
        return np.broadcast_to(A * f, (n, 2, 2))
    sx, sy = info.pixel_size_um if info.pixel_size_um else (1.0, 1.0)
    return np.broadcast_to(np.array([[sx, 0.0], [0.0, -sy]]), (n, 2, 2))


def _circularity(geoms_px: np.ndarray, info) -> np.ndarray:
    """4π·area / perimeter², the perimeter taken on the outline simplified by one pixel (Douglas–Peucker; a staircase corner lies
    0.71 px off the diagonal it steps along, so a smaller tolerance keeps the steps):
    on the pixel staircase itself a perfect disc would score (π/4)² = 0.62. The outline is first put in a
    canonical form (collinear vertices dropped, rings normalised), so a joined object's polygon and the same
    object's polygon from an untiled run simplify identically. Anisotropic pixels and map transforms are applied
    after simplification (a geographic CRS is measured in pixels: a ratio, nearly the same)."""
    import shapely

    simple = shapely.simplify(shapely.normalize(shapely.simplify(geoms_px, 0.0)), 1.0)
    m = None
    if info.crs_wkt:
        if not scene_crs(info).is_geographic:
            a, b, _, d, e, _ = info.transform
            m = np.array([[a, b], [d, e]], np.float64)
    elif info.pixel_size_um:
        m = np.diag(np.asarray(info.pixel_size_um, np.float64))
    full = geoms_px
    if m is not None:
        simple = shapely.transform(simple, lambda xy: xy @ m.T)
        full = shapely.transform(geoms_px, lambda xy: xy @ m.T)
    return 4 * np.pi * shapely.area(full) / np.maximum(shapely.length(simple) ** 2, 1e-12)


def object_columns(stats: dict[str, np.ndarray], geoms_px: np.ndarray, area: np.ndarray, perimeter: np.ndarray,
                   info, channels: list[str]) -> dict[str, np.ndarray]:
    """Output columns of whole objects: shape features (lengths in the perimeter's unit, orientation in degrees
    counter-clockwise from the x axis — image right / east — in -90..90; circularity from :func:`_circularity`)
    and per-channel intensities."""
    import shapely

    n = len(geoms_px)
    out: dict[str, np.ndarray] = {}
    cnt = np.asarray(stats["area_px"], np.float64)
    if n:
        cov = np.empty((n, 2, 2))
        cov[:, 0, 0] = np.asarray(stats["m2_xx"]) / cnt
        cov[:, 1, 1] = np.asarray(stats["m2_yy"]) / cnt
        cov[:, 0, 1] = cov[:, 1, 0] = np.asarray(stats["m2_xy"]) / cnt
        L = _linear_map(info, np.asarray(stats["mean_x"]), np.asarray(stats["mean_y"]))
        cov = L @ cov @ np.swapaxes(L, 1, 2)
        w, v = np.linalg.eigh(cov)  # ascending eigenvalues
        w = np.maximum(w, 0.0)
        major, minor = 4 * np.sqrt(w[:, 1]), 4 * np.sqrt(w[:, 0])
        ecc = np.where(w[:, 1] > 0, np.sqrt(1 - w[:, 0] / np.where(w[:, 1] > 0, w[:, 1], 1)), 0.0)
        ang = np.degrees(np.arctan2(v[:, 1, 1], v[:, 0, 1]))
        ang = np.where(ang > 90, ang - 180, np.where(ang <= -90, ang + 180, ang))
        hull = shapely.area(shapely.convex_hull(geoms_px))
        solidity = shapely.area(geoms_px) / np.maximum(hull, 1e-12)
        circ = _circularity(geoms_px, info)
    else:
        major = minor = ecc = ang = solidity = circ = np.zeros(0)
    out.update({"major_axis": major, "minor_axis": minor, "eccentricity": ecc, "orientation": ang,
                "solidity": solidity, "circularity": circ})
    for c, name in enumerate(channel_columns(channels)):
        s = np.asarray(stats[f"i{c}_sum"], np.float64)
        out[f"{name}_mean"] = s / np.maximum(cnt, 1)
        out[f"{name}_median"] = np.asarray(stats[f"i{c}_median"], np.float64)
        out[f"{name}_std"] = np.sqrt(np.maximum(np.asarray(stats[f"i{c}_m2"], np.float64), 0) / np.maximum(cnt, 1))
        out[f"{name}_min"] = np.asarray(stats[f"i{c}_min"], np.float64)
        out[f"{name}_max"] = np.asarray(stats[f"i{c}_max"], np.float64)
        out[f"{name}_integrated"] = s
    return out


def part_stat_columns(channels: int) -> list[str]:
    """Scalar measurement columns of a part file (the values lists excluded)."""
    return [*MOMENTS, "border", *[c for i in range(channels) for c in _piece_cols(i)]]


def scene_density(n_objects: int, valid_px: int, info, tissue_px: int | None = None) -> dict:
    """Per scene: the area measured over (the tissue mask when there is one, else the valid image area) and
    objects per unit of it — per mm² for microscopy, per km² for georeferenced scenes, per megapixel otherwise.
    A geographic CRS's pixel area is taken at the scene's centre latitude."""
    px = tissue_px if tissue_px is not None else valid_px
    a, b, c, d, e, f = info.transform
    if info.crs_wkt:
        crs = scene_crs(info)
        det = abs(a * e - b * d)
        if crs.is_geographic:
            lat = math.radians(d * info.width / 2 + e * info.height / 2 + f)
            r = crs.ellipsoid.semi_major_metre if crs.ellipsoid else 6378137.0
            k = math.pi / 180 * r
            px_area = det * k * k * math.cos(lat)
        else:
            fac = crs.axis_info[0].unit_conversion_factor or 1.0
            px_area = det * fac * fac
        area, unit, per = px * px_area / 1e6, "km2", "per_km2"
    elif info.pixel_size_um:
        area, unit, per = px * info.pixel_size_um[0] * info.pixel_size_um[1] / 1e6, "mm2", "per_mm2"
    else:
        area, unit, per = px / 1e6, "Mpx", "per_Mpx"
    return {"tissue_area": area, "tissue_area_unit": unit,
            "tissue_area_source": "tissue mask" if tissue_px is not None else "valid image area",
            "objects_density": n_objects / area if area > 0 else None, "objects_density_unit": per}
