"""The common footprint of two runs, and the band along its edge where objects may be cut.

Two runs can only be compared where both looked. The common footprint is the intersection of the two
scenes' footprints (date 2's moved back by the estimated shift). Along its edge an object may be cut: by the
end of one run while the other goes on (whole in one run, truncated or out of view in the other), and even
where both runs end at the same place, since a co-registration shift moves what each run sees by a pixel or
two — a sliver of an object can be in one run and not the other. So, in the band within ``tolerance`` (the
shift plus a couple of pixels) of the edge:

* matched objects are compared on their parts inside the footprint (both cut at the same line);
* an unmatched object is called new or gone only if most of it (≥ ``EDGE_INSIDE``) lies inside the footprint
  shrunk by ``tolerance``; otherwise it is ``edge``: cut, not compared (:mod:`pipeline.stages.change`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import shapely

__all__ = ["Footprint", "common_footprint", "EDGE_INSIDE"]

EDGE_INSIDE = 0.5


@dataclass
class Footprint:
    """The common footprint (date-1 frame), the same shrunk by the tolerance, and the band along its edge."""

    area: object
    inner: object
    zone: object

    def as_dict(self) -> dict:
        shape = shapely.simplify(self.area, 0)  # the densified rectangle's collinear vertices dropped
        return {"geometry": json.loads(shapely.to_geojson(shape)), "area": float(self.area.area),
                "bounds": list(self.area.bounds)}


def common_footprint(old, new, tolerance: float) -> Footprint:
    """``old ∩ new`` (shapely polygons in one frame, ``new`` already moved back by the shift), shrunk by and
    the band within ``tolerance`` of its edge. Empty polygons when the runs do not overlap."""
    area = shapely.intersection(old, new)
    if area.is_empty or area.area <= 0:
        return Footprint(shapely.Polygon(), shapely.Polygon(), shapely.Polygon())
    inner = shapely.buffer(area, -tolerance, join_style="mitre")
    zone = shapely.buffer(area.boundary, tolerance)
    return Footprint(area, inner, zone)
