"""Local building labels for ``seamline adapt``: an OSM extract or outlines corrected in QGIS.

What a user has at hand is one of: an OpenStreetMap extract as ``.osm.pbf`` (Geofabrik, BBBike, osmium
extract) or ``.osm`` XML (JOSM, the Overpass API), a GeoPackage/GeoJSON exported from QGIS (QuickOSM,
HOT Export Tool, hand-drawn outlines). OSM files are read with GDAL's OSM driver (through pyogrio, which ships
it): its ``multipolygons`` layer holds closed ways and multipolygon relations with their tags; buildings are
those with a ``building`` tag other than ``no``. The driver's default node index assumes the node ids of a
file increase (true of planet extracts, not of every hand-made file), so the slower general index is used.

A vector file with a ``building`` column (an OSM export) keeps the rows tagged as buildings; any other file
keeps every polygon: outlines drawn in QGIS are buildings by construction. Points and lines are dropped.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InputError

__all__ = ["read_labels", "OSM_SUFFIXES"]

OSM_SUFFIXES = (".pbf", ".osm")


def _read_osm(path: Path):
    import pyogrio

    pyogrio.set_gdal_config_options({"OSM_USE_CUSTOM_INDEXING": "NO"})
    try:
        return pyogrio.read_dataframe(path, layer="multipolygons")
    finally:
        pyogrio.set_gdal_config_options({"OSM_USE_CUSTOM_INDEXING": None})


def read_labels(paths: list[str], what: str = "--labels"):
    """Building polygons of one or several label files, in EPSG:4326 (or the files' common CRS), with a
    ``source`` column naming the file. Errors name the file, what was expected and what was found."""
    import geopandas as gpd
    import pandas as pd

    frames = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InputError(f"{what} {p}: not found; give a GeoPackage, GeoJSON or OSM extract (.osm.pbf) of building outlines")
        try:
            gdf = _read_osm(path) if path.suffix.lower() in OSM_SUFFIXES else gpd.read_file(path)
        except Exception as exc:  # noqa: BLE001 - GDAL raises several types for a file it cannot read; one line here
            raise InputError(f"{what} {p}: cannot be read as vector data ({str(exc).splitlines()[0]}); "
                             "give a GeoPackage, GeoJSON or OSM extract (.osm.pbf)") from None
        if gdf.crs is None:
            raise InputError(f"{what} {p}: no CRS; set one (e.g. save it from QGIS as EPSG:4326) so the outlines can be "
                             "placed on the imagery")
        found = len(gdf)
        if "building" in gdf.columns:
            tag = gdf["building"].astype("string").str.lower()
            gdf = gdf[tag.notna() & (tag != "no")]
        gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
        gdf = gdf[gdf.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
        if gdf.empty:
            raise InputError(f"{what} {p}: no building polygon among its {found} features (expected polygons, or OSM "
                             "ways tagged building=*); check the layer and the tags")
        frames.append(gpd.GeoDataFrame({"source": path.name}, geometry=gdf.geometry.to_crs("EPSG:4326").values,
                                       index=range(len(gdf)), crs="EPSG:4326"))
    if not frames:
        raise InputError(f"{what}: no label file given; pass at least one GeoPackage, GeoJSON or .osm.pbf")
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs="EPSG:4326")
