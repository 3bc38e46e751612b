"""Length units of image metadata (OME ``PhysicalSizeXUnit``, OME-Zarr axis units, ImageJ ``unit``, TIFF
resolution units) in µm: one table for every reader."""

from __future__ import annotations

__all__ = ["UNIT_TO_UM", "to_um"]

UNIT_TO_UM = {"nm": 1e-3, "nanometer": 1e-3, "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0,
              "micrometer": 1.0, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
              "metre": 1e6}


def to_um(value: float, unit: str | None) -> float | None:
    """A length in µm, or None for units that are not lengths ("pixel", "reference frame", unknown)."""
    if unit is None:
        return None
    f = UNIT_TO_UM.get(str(unit).strip().lower())
    return None if f is None else float(value) * f
