"""A default QGIS style inside the GeoPackage, so the layer opens styled: outline colour per class, no fill.

QGIS reads a ``layer_styles`` table (its GeoPackage styling extension; the same table it writes with "Save
as default") and applies the row with ``useAsDefault`` when the layer is loaded — no action from the user.
The style is QML (QGIS's own format, a categorized renderer on ``class``) plus an equivalent SLD for other
clients. Colours come from :mod:`pipeline.report.render`, so QGIS, the quicklook and the report agree.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape, quoteattr

from pipeline.io.palette import class_colours, hex_colour

__all__ = ["add_default_style", "categorized_qml", "categorized_sld", "STYLE_NAME"]

STYLE_NAME = "seamline classes"
OUTLINE_MM = 0.4

_CREATE = """CREATE TABLE IF NOT EXISTS layer_styles (
  id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), f_table_schema TEXT(256),
  f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT,
  useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
  update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"""


def _opt(name: str, value: str) -> str:
    return f'<Option name="{name}" type="QString" value={quoteattr(value)}/>'


def _fill_symbol(name: str, rgb: tuple[int, int, int]) -> str:
    """A SimpleFill with no brush and a solid outline (QGIS 3.x symbol XML)."""
    props = {"color": "0,0,0,0", "style": "no", "outline_color": "%d,%d,%d,255" % rgb, "outline_style": "solid",
             "outline_width": str(OUTLINE_MM), "outline_width_unit": "MM", "joinstyle": "miter", "offset": "0,0",
             "offset_unit": "MM", "border_width_map_unit_scale": "3x:0,0,0,0,0,0",
             "offset_map_unit_scale": "3x:0,0,0,0,0,0"}
    options = "".join(_opt(k, v) for k, v in props.items())
    legacy = "".join(f"<prop k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in props.items())
    return (f'<symbol type="fill" name={quoteattr(name)} alpha="1" clip_to_extent="1" force_rhr="0">'
            f'<layer class="SimpleFill" enabled="1" locked="0" pass="0"><Option type="Map">{options}</Option>{legacy}</layer>'
            "</symbol>")


def categorized_qml(colours: dict[str, tuple[int, int, int]], attribute: str = "class") -> str:
    """QML of a categorized renderer: one category (and symbol) per class."""
    cats = "".join(f'<category render="true" symbol="{i}" value={quoteattr(c)} label={quoteattr(c)}/>'
                   for i, c in enumerate(colours))
    syms = "".join(_fill_symbol(str(i), rgb) for i, rgb in enumerate(colours.values()))
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            '<qgis version="3.22.0" styleCategories="Symbology">'
            f'<renderer-v2 type="categorizedSymbol" attr={quoteattr(attribute)} symbollevels="0" forceraster="0" enableorderby="0">'
            f"<categories>{cats}</categories><symbols>{syms}</symbols>"
            f'<source-symbol>{_fill_symbol("0", next(iter(colours.values())))}</source-symbol>'
            "<rotation/><sizescale/></renderer-v2><blendMode>0</blendMode><featureBlendMode>0</featureBlendMode>"
            "<layerGeometryType>2</layerGeometryType></qgis>\n")


def categorized_sld(layer: str, colours: dict[str, tuple[int, int, int]], attribute: str = "class") -> str:
    """The same style as OGC SLD 1.1 (one rule per class, stroke only)."""
    rules = "".join(
        f"<se:Rule><se:Name>{escape(c)}</se:Name><ogc:Filter><ogc:PropertyIsEqualTo>"
        f"<ogc:PropertyName>{escape(attribute)}</ogc:PropertyName><ogc:Literal>{escape(c)}</ogc:Literal>"
        f"</ogc:PropertyIsEqualTo></ogc:Filter><se:PolygonSymbolizer><se:Stroke>"
        f'<se:SvgParameter name="stroke">{hex_colour(rgb)}</se:SvgParameter>'
        f'<se:SvgParameter name="stroke-width">1.5</se:SvgParameter></se:Stroke></se:PolygonSymbolizer></se:Rule>'
        for c, rgb in colours.items())
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" xmlns:ogc="http://www.opengis.net/ogc" '
            'xmlns:se="http://www.opengis.net/se" version="1.1.0">'
            f"<NamedLayer><se:Name>{escape(layer)}</se:Name><UserStyle><se:Name>{escape(STYLE_NAME)}</se:Name>"
            f"<se:FeatureTypeStyle>{rules}</se:FeatureTypeStyle></UserStyle></NamedLayer></StyledLayerDescriptor>\n")


def add_default_style(gpkg: str | Path, layer: str = "objects", geometry_column: str = "geom",
                      model_classes: Sequence[str] | None = None, attribute: str = "class",
                      colours: dict[str, tuple[int, int, int]] | None = None) -> dict[str, tuple[int, int, int]]:
    """Write (or replace) the layer's default style: a category per class found in the layer (plus the
    model's classes, which fix the colour order). Returns the colours used. ``attribute`` and ``colours``:
    categories on another field with fixed colours (the change layer of ``seamline diff``)."""
    con = sqlite3.connect(str(gpkg))
    try:
        if colours is None:
            found = [r[0] for r in con.execute(f'SELECT DISTINCT "{attribute}" FROM "{layer}" WHERE "{attribute}" IS NOT NULL')]
            colours = class_colours(model_classes, found) or class_colours(["object"])
        with con:
            con.execute(_CREATE)
            con.execute("DELETE FROM layer_styles WHERE f_table_name = ? AND styleName = ?", (layer, STYLE_NAME))
            con.execute("UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (layer,))
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, styleName, "
                "styleQML, styleSLD, useAsDefault, description, owner, ui) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', NULL)",
                (layer, geometry_column, STYLE_NAME, categorized_qml(colours, attribute),
                 categorized_sld(layer, colours, attribute), f"Seamline: outline colour per {attribute}, no fill"))
        return colours
    finally:
        con.close()
