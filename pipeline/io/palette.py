"""One colour per class, everywhere: the quicklook, the HTML report, the GeoPackage's QGIS style, the QuPath
GeoJSON and napari. Colours follow the model's class order (checkpoint ``classes``), then any other class
names found in the data in sorted order — stable for a given model, not dependent on which classes a scene
has."""

from __future__ import annotations

from typing import Iterable, Sequence

__all__ = ["PALETTE", "CHANGE_COLOURS", "class_colours", "hex_colour"]

# High-contrast outline colours, readable on dark fluorescence and on green/grey aerial scenes alike.
PALETTE: list[tuple[int, int, int]] = [
    (255, 221, 0),    # yellow
    (255, 40, 200),   # magenta
    (0, 230, 255),    # cyan
    (255, 120, 0),    # orange
    (120, 255, 60),   # lime
    (255, 50, 50),    # red
    (80, 140, 255),   # blue
    (255, 255, 255),  # white
    (180, 90, 255),   # violet
    (0, 200, 140),    # teal
    (255, 170, 170),  # pink
    (170, 120, 60),   # brown
]

# One colour per verdict of ``seamline diff`` (pipeline.stages.change.CHANGES): its GeoPackage style and its page.
CHANGE_COLOURS: dict[str, tuple[int, int, int]] = {
    "new": (40, 210, 70),
    "gone": (240, 40, 40),
    "grown": (255, 150, 0),
    "shrunk": (180, 90, 255),
    "same": (160, 160, 160),
    "class-changed": (0, 200, 240),
    "edge": (90, 90, 90),
}


def class_colours(model_classes: Sequence[str] | None, found: Iterable[str] = ()) -> dict[str, tuple[int, int, int]]:
    """Colour per class name: the model's classes in their order first, then other names found, sorted."""
    names: list[str] = list(dict.fromkeys(model_classes or []))
    names += sorted(set(found) - set(names))
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb
