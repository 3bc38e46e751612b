"""Building outline regularisation: few vertices and right angles, as GIS analysts draw buildings.

Per polygon:

1. **simplify** (Douglas–Peucker) with a tolerance in map units (metres), converted to pixels by the
   caller for square pixels, so the result does not depend on the image's resolution;
2. **dominant orientation** from the minimum rotated rectangle (its longer side);
3. **square near-right angles**: each edge within ``angle_tolerance`` degrees of the dominant orientation or
   its perpendicular is turned onto it (through its midpoint); consecutive edges that end up parallel are
   merged; vertices are the intersections of consecutive edge lines. Other edges keep their direction;
4. **fall back** to the simplified polygon when the squared one is invalid or fits the original poorly
   (IoU < ``min_iou``) — an L-shaped or round building is better simplified than forced square.

Off by default; the write stage applies it to the classes named in the config (``regularize.classes``)
and keeps the area before (``area_raw``) beside the area after (``area``).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["regularize_polygon", "regularize_many"]


def _dominant_angle(poly) -> float:
    rect = np.asarray(poly.minimum_rotated_rectangle.exterior.coords)
    if len(rect) < 4:
        return 0.0
    e1, e2 = rect[1] - rect[0], rect[2] - rect[1]
    e = e1 if np.hypot(*e1) >= np.hypot(*e2) else e2
    return math.atan2(e[1], e[0])


def _square_ring(coords: np.ndarray, theta: float, angle_tol: float) -> np.ndarray | None:
    """Squared ring (closed, first == last) in the frame rotated by ``-theta``, or None if degenerate."""
    c, s = math.cos(-theta), math.sin(-theta)
    rot = np.array([[c, -s], [s, c]])
    pts = coords[:-1] @ rot.T
    n = len(pts)
    if n < 3:
        return None
    lines = []  # (kind, value or (point, direction)); kind 'h': y = v, 'v': x = v, 'f': free line
    for i in range(n):
        a, b = pts[i], pts[(i + 1) % n]
        d = b - a
        length = float(np.hypot(*d))
        if length == 0:
            continue
        ang = math.degrees(math.atan2(d[1], d[0])) % 180
        mid = (a + b) / 2
        if min(ang, 180 - ang) <= angle_tol:
            line = ("h", float(mid[1]), length)
        elif abs(ang - 90) <= angle_tol:
            line = ("v", float(mid[0]), length)
        else:
            line = ("f", (mid, d / length), length)
        if lines and line[0] in "hv" and lines[-1][0] == line[0]:  # parallel neighbours: one edge, weighted
            k, v, w = lines[-1]
            lines[-1] = (k, (v * w + line[1] * length) / (w + length), w + length)
        else:
            lines.append(line)
    if len(lines) > 1 and lines[0][0] in "hv" and lines[0][0] == lines[-1][0]:
        k, v, w = lines.pop()
        k0, v0, w0 = lines[0]
        lines[0] = (k0, (v0 * w0 + v * w) / (w0 + w), w0 + w)
    if len(lines) < 3:
        return None

    def as_pd(line):
        k, v, _ = line
        if k == "h":
            return np.array([0.0, v]), np.array([1.0, 0.0])
        if k == "v":
            return np.array([v, 0.0]), np.array([0.0, 1.0])
        return v

    out = []
    for i in range(len(lines)):
        (p1, d1), (p2, d2) = as_pd(lines[i - 1]), as_pd(lines[i])
        den = d1[0] * d2[1] - d1[1] * d2[0]
        if abs(den) < 1e-9:
            return None
        t = ((p2[0] - p1[0]) * d2[1] - (p2[1] - p1[1]) * d2[0]) / den
        out.append(p1 + t * d1)
    ring = np.asarray(out) @ rot  # back to the original frame (rot is orthonormal: inverse = transpose)
    return np.vstack([ring, ring[:1]])


def regularize_polygon(poly, tolerance: float, angle_tolerance: float = 15.0, min_iou: float = 0.8):
    """One polygon (units of ``tolerance``) → regularised polygon (see the module docstring)."""
    import shapely
    from shapely.geometry import Polygon

    if poly is None or poly.is_empty:
        return poly
    if poly.geom_type == "MultiPolygon":
        from shapely.geometry import MultiPolygon

        return MultiPolygon([regularize_polygon(p, tolerance, angle_tolerance, min_iou) for p in poly.geoms])
    simple = poly.simplify(tolerance, preserve_topology=True)
    if simple.is_empty or simple.geom_type != "Polygon":
        return poly
    theta = _dominant_angle(simple)
    ring = _square_ring(np.asarray(simple.exterior.coords), theta, angle_tolerance)
    if ring is None:
        return simple
    holes = []
    for h in simple.interiors:
        r = _square_ring(np.asarray(h.coords), theta, angle_tolerance)
        if r is not None:
            holes.append(r)
    squared = Polygon(ring, holes)
    if not squared.is_valid or squared.is_empty:
        return simple
    ref = poly if poly.is_valid else poly.buffer(0)  # a self-touching ring (pixel outlines can be) made valid
    inter = shapely.area(shapely.intersection(squared, ref))
    iou = inter / max(1e-12, shapely.area(shapely.union(squared, ref)))
    return squared if iou >= min_iou else simple


def regularize_many(geoms: np.ndarray, tolerance: float, angle_tolerance: float = 15.0, min_iou: float = 0.8) -> np.ndarray:
    """Vectorised over an array of polygons."""
    return np.array([regularize_polygon(g, tolerance, angle_tolerance, min_iou) for g in geoms], dtype=object)
