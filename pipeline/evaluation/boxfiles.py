"""Box files: Pascal VOC XML and DeepForest-style CSV, read into ``{image name: [(xmin, ymin, xmax, ymax,
class), ...]}`` in pixels. Ground truth for ``seamline evaluate --boxes`` and training data for box-supervised
models (:mod:`pipeline.training.boxdata`) alike.

* **Pascal VOC XML** — ``<filename>`` names the image; ``<object><name>`` the class; ``<bndbox>`` the
  pixel box (the NEON/DeepForest annotations).
* **CSV** — one box per row: ``image_path, xmin, ymin, xmax, ymax, label``. Columns are found by *name*,
  never by position: the SJER truth file orders them ``xmin, xmax, ymin, ymax``.

A box file names an image by file name, else by the name without its extension when one entry has it.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from pipeline.errors import InputError

__all__ = ["read_box_file", "boxes_of_image", "BOX_COLUMNS"]

BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")


def _read_voc(path: Path) -> dict[str, list[tuple[float, float, float, float, str]]]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(f"box file {path}: not valid Pascal VOC XML ({exc})") from None
    name = Path(root.findtext("filename") or path.with_suffix("").name).name
    rows = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            raise InputError(f"box file {path}: an <object> has no <bndbox>; expected xmin/ymin/xmax/ymax per object")
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in BOX_COLUMNS)
        except (TypeError, ValueError):
            raise InputError(f"box file {path}: a <bndbox> lacks a numeric xmin/ymin/xmax/ymax") from None
        rows.append((x0, y0, x1, y1, (obj.findtext("name") or "object").strip()))
    return {name: rows}


def _read_csv(path: Path) -> dict[str, list[tuple[float, float, float, float, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("image_path", *BOX_COLUMNS) if c not in cols]
        if missing:
            raise InputError(f"box file {path}: columns {missing} not found (found {cols}); expected a DeepForest-style "
                             "CSV with image_path, xmin, ymin, xmax, ymax[, label] (any order)")
        out: dict[str, list] = defaultdict(list)
        for i, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k}
            try:
                x0, y0, x1, y1 = (float(row[k]) for k in BOX_COLUMNS)
            except (TypeError, ValueError):
                raise InputError(f"box file {path}, line {i}: xmin/ymin/xmax/ymax must be numbers") from None
            out[Path(row["image_path"]).name].append((x0, y0, x1, y1, str(row.get("label") or "object").strip()))
    return dict(out)


def read_box_file(path: str | Path) -> dict[str, list[tuple[float, float, float, float, str]]]:
    """Image file name → boxes ``(xmin, ymin, xmax, ymax, class)`` in pixels, from a VOC XML or CSV file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"box file {path}: not found")
    if path.suffix.lower() == ".xml":
        return _read_voc(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    raise InputError(f"box file {path}: unknown format; expected .xml (Pascal VOC), .csv (DeepForest) or a vector file")


def boxes_of_image(table: dict[str, list], image: str | Path) -> list | None:
    """The rows of ``table`` (from :func:`read_box_file`) for ``image``: by file name, else by the name without
    its extension when exactly one entry has it (NEON tiles ship as both ``.tif`` and ``.png`` and a box file
    names one of them); None when nothing names the image."""
    name = Path(image).name
    if name in table:
        return table[name]
    same = [k for k in table if Path(k).stem == Path(name).stem]
    return table[same[0]] if len(same) == 1 else None
