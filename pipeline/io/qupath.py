"""QuPath-importable GeoJSON: a FeatureCollection of detections carrying the measurements.

QuPath (File > Import objects, or drag and drop) reads, per feature: ``properties.objectType`` ("detection"
for cells/nuclei), ``classification`` ``{name, color: [r, g, b]}`` and ``measurements`` (name → number);
coordinates are full-resolution pixels (x = column, y = row), whatever the image's physical size. Written as
a stream, one batch of features at a time: memory stays bounded by a batch. NaN (a JSON error) is left out.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import IO

import numpy as np
import shapely

from pipeline.io.palette import class_colours

__all__ = ["GeoJSONWriter", "qupath_measurements"]

_UNIT_LABEL = {"um2": "µm^2", "um": "µm", "m2": "m^2", "m": "m", "px": "px"}


def qupath_measurements(rows: dict[str, np.ndarray], channels: list[str], channel_cols: list[str]) -> list[tuple[str, np.ndarray]]:
    """(QuPath-style name, values) pairs: 'Area µm^2', 'DAPI: Mean', ... in the units of the table."""
    au = _UNIT_LABEL.get(str(rows["area_unit"][0]), str(rows["area_unit"][0])) if len(rows["area_unit"]) else "px"
    lu = _UNIT_LABEL.get(str(rows["perimeter_unit"][0]), "") if len(rows["perimeter_unit"]) else "px"
    out = [("Object ID", rows["object_id"]), ("Score", rows["score"]), (f"Area {au}", rows["area"]),
           (f"Perimeter {lu}", rows["perimeter"]), ("Area px", rows["area_px"]), ("Circularity", rows["circularity"]),
           ("Solidity", rows["solidity"]), (f"Major axis {lu}", rows["major_axis"]),
           (f"Minor axis {lu}", rows["minor_axis"]), ("Eccentricity", rows["eccentricity"]),
           ("Orientation (degrees)", rows["orientation"])]
    for name, col in zip(channels, channel_cols):
        for stat, label in (("mean", "Mean"), ("median", "Median"), ("std", "Std.Dev."), ("min", "Min"),
                            ("max", "Max"), ("integrated", "Integrated")):
            out.append((f"{name}: {label}", rows[f"{col}_{stat}"]))
    return out


class GeoJSONWriter:
    """Stream features into ``path``; call :meth:`close` to finish the FeatureCollection."""

    def __init__(self, path: Path, colours: dict[str, tuple[int, int, int]] | None = None):
        """``colours``: class name -> RGB (:func:`pipeline.io.palette.class_colours`, the palette of every other
        view); a class it lacks gets the palette's colour for its sorted position after them."""
        self.colours = dict(colours or {})
        self._f: IO[str] = open(path, "w", encoding="utf-8")
        self._f.write('{"type": "FeatureCollection", "features": [\n')
        self._first = True

    def add(self, geoms_px: np.ndarray, rows: dict[str, np.ndarray], classes: np.ndarray,
            channels: list[str], channel_cols: list[str]) -> None:
        """``classes``: each feature's class name (its QuPath classification, in its class colour)."""
        if len(geoms_px) == 0:
            return
        geo = shapely.to_geojson(geoms_px)
        meas = qupath_measurements(rows, channels, channel_cols)
        found = sorted({str(c) for c in classes.tolist()})
        if set(found) - set(self.colours):
            self.colours = class_colours(list(self.colours), found)
        cls_json = {c: json.dumps({"name": c, "color": list(self.colours[c])}) for c in found}
        names = [json.dumps(n) for n, _ in meas]
        cols = [np.asarray(v, np.float64) for _, v in meas]
        parts = []
        for i in range(len(geoms_px)):
            m = ", ".join(f"{n}: {_num(c[i])}" for n, c in zip(names, cols) if math.isfinite(c[i]))
            parts.append(f'{{"type": "Feature", "id": "{uuid.uuid4()}", "geometry": {geo[i]}, "properties": '
                         f'{{"objectType": "detection", "classification": {cls_json[str(classes[i])]}, "measurements": {{{m}}}}}}}')
        self._f.write(("" if self._first else ",\n") + ",\n".join(parts))
        self._first = False

    def close(self) -> None:
        self._f.write("\n]}\n")
        self._f.close()

    def abort(self) -> None:
        self._f.close()


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) and abs(v) < 2**53 else repr(float(v))
