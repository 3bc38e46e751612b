"""Stage 6 (assemble), geometry: polygons from scene pixel coordinates to the raster's coordinates, with areas in real units.

* projected CRS: planar area of the transformed polygon, in m² (map units converted to metres);
* geographic CRS (EPSG:4326 and kin): geodesic area and perimeter on the CRS's ellipsoid (pyproj
  ``Geod.geometry_area_perimeter``, exterior counter-clockwise, holes subtracted);
* no georeferencing but a physical pixel size (OME-TIFF / ImageJ): µm² = polygon area in pixels × size_x × size_y;
* otherwise pixels.

The geometry itself is always in the raster's own coordinates (its affine transform; pixel coordinates with
x = column and y = -row for an image without georeferencing, as GDAL and QGIS place it), so polygons overlay the input in QGIS.
"""

from __future__ import annotations

import numpy as np

from pipeline.io.scene import SceneInfo, scene_crs

__all__ = ["to_scene_coords", "measure"]

def to_scene_coords(geoms_px: np.ndarray, transform) -> np.ndarray:
    import shapely

    a, b, c, d, e, f = transform

    def fn(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.stack([a * x + b * y + c, d * x + e * y + f], axis=1)

    return shapely.transform(geoms_px, fn)


def measure(geoms_px: np.ndarray, info: SceneInfo) -> dict[str, np.ndarray]:
    """Output geometry and measures for pixel-space polygons of one scene."""
    import shapely

    geoms = to_scene_coords(geoms_px, info.transform)
    n = len(geoms)
    crs = scene_crs(info) if info.crs_wkt else None
    if crs is not None and crs.is_geographic:
        geod = crs.get_geod()
        area = np.empty(n)
        perim = np.empty(n)
        oriented = shapely.orient_polygons(geoms)
        for i, g in enumerate(oriented):
            a_, p_ = geod.geometry_area_perimeter(g)
            area[i], perim[i] = abs(a_), p_
        unit, punit = "m2", "m"
    elif crs is not None and crs.is_projected:
        f = crs.axis_info[0].unit_conversion_factor or 1.0
        area = shapely.area(geoms) * f * f
        perim = shapely.length(geoms) * f
        unit, punit = "m2", "m"
    elif info.pixel_size_um:
        sx, sy = info.pixel_size_um
        scaled = shapely.transform(geoms_px, lambda xy: xy * np.array([sx, sy]))
        area = shapely.area(scaled)
        perim = shapely.length(scaled)
        unit, punit = "um2", "um"
    else:
        area = shapely.area(geoms_px)
        perim = shapely.length(geoms_px)
        unit, punit = "px", "px"
    cent = shapely.centroid(geoms)
    return {
        "geometry": geoms,
        "area": np.asarray(area, np.float64),
        "area_unit": np.full(n, unit, dtype=object),
        "perimeter": np.asarray(perim, np.float64),
        "perimeter_unit": np.full(n, punit, dtype=object),
        "centroid_x": shapely.get_x(cent) if n else np.zeros(0),
        "centroid_y": shapely.get_y(cent) if n else np.zeros(0),
    }
