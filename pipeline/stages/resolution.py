"""The ONE resolution rule: which pyramid level to read and how much to resample it, so that the model sees
pixels of the size it was trained at — the same rule for slides (µm) and aerial scenes (m).

    scale  = extra_scale × model pixel size / source level-0 pixel size      (level-0 pixels per working pixel)
    level  = the coarsest level whose downsample ≤ scale (the level just finer than needed)
    resample = scale / level downsample ≥ 1, done by area averaging at ingest (never for labels)

The zarr store holds the *working* image (level ``level`` resampled by ``resample``); polygons are mapped
back with the level-0 transform scaled by ``scale``, so they come out in level-0 coordinates / the CRS, and
areas in real units. Unknown pixel size (of the model or of the image) -> native resolution (scale =
extra_scale) and a warning in the summary. Upsampling is never done: a scale below 1 is raised to 1.

Hook for object-size rescaling (``nuclei``): pass ``extra_scale`` = nominal object diameter in the image
(level-0 px) / the model's ``object_diameter_px`` (or, when the pixel size is known, the factor that makes
the model's µm/px match). It multiplies the pixel-size rule, and picks the level and area-averaging factor
like any other scale; ``plan_input(..., extra_scale=...)`` threads it through.

Resampling is per output pixel over its own footprint with a fixed summation order, so a block-wise ingest
gives exactly the same working image whatever the block (tile) size: tiled == untiled still holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pipeline.errors import ParameterError
from pipeline.io.readers.base import Level
from pipeline.io.units import to_um

__all__ = ["Resolution", "choose_resolution", "model_pixel_size", "area_resample", "working_shape", "source_window",
           "LEVEL_SNAP"]

LEVEL_SNAP = 0.01  # a scale within 1 % of a level's downsample reads that level as it is
_FOOT_UM = {"foot": 304800.0, "us survey foot": 1200 / 3937 * 1e6, "ft": 304800.0}


def _unit_um(unit: str | None) -> float | None:
    if unit is None:
        return None
    return to_um(1.0, unit) or _FOOT_UM.get(str(unit).strip().lower())


@dataclass(frozen=True)
class Resolution:
    """Where to read and how much to shrink: see the module docstring."""

    level: int
    resample: float
    scale: float
    warnings: tuple[str, ...] = field(default=())

    def describe(self) -> dict:
        return {"level": self.level, "resample": round(self.resample, 6), "scale": round(self.scale, 6),
                "warnings": list(self.warnings)}


def model_pixel_size(md: dict | None, override: Sequence | None = None) -> tuple[float, str] | None:
    """The model's training pixel size ``(value, unit)`` from the config override or the checkpoint JSON
    (``"pixel_size": [value, "m" | "um"]``), else None (unknown)."""
    ps = override if override is not None else (md or {}).get("pixel_size")
    if not ps:
        return None
    return float(ps[0]), str(ps[1])


def choose_resolution(levels: Sequence[Level], pixel_size: tuple[float, float] | None, pixel_unit: str | None,
                      model_px: tuple[float, str] | None, *, extra_scale: float = 1.0, level: int | None = None,
                      model_name: str = "the model") -> Resolution:
    """Apply the rule. ``level`` (config) forces a level read as stored (times ``extra_scale``)."""
    warns: list[str] = []
    if level is not None:
        if not 0 <= level < len(levels):
            raise ParameterError(f"resolution.level: {level} does not exist, the image has levels 0..{len(levels) - 1} "
                                 f"(downsamples {', '.join(f'{lv.downsample:g}' for lv in levels)}); pick one of those")
        scale = levels[level].downsample * max(1.0, extra_scale)
    else:
        scale = extra_scale
        if model_px is not None:
            src_um = _unit_um(pixel_unit)
            m_um = _unit_um(model_px[1])
            if pixel_size is None or src_um is None:
                fix = ("if its pixels are not about that size, georeference it (gdal_translate -a_srs EPSG:... "
                       "-a_ullr ...) so that they can be resampled" if model_px[1] == "m"
                       else "set pixel_size_um if you know it")
                warns.append(f"the image's pixel size is unknown: {model_name} (trained at {model_px[0]:g} {model_px[1]}"
                             f"/px) ran at the image's native resolution; {fix}")
            elif m_um is None:
                warns.append(f"{model_name}: pixel_size unit {model_px[1]!r} is not m or um: ran at native resolution")
            else:
                src = math.sqrt(pixel_size[0] * pixel_size[1]) * src_um
                scale = extra_scale * model_px[0] * m_um / src
        # Four significant digits: pixel sizes read from georeferencing carry float noise (the same pixels in UTM
        # and in EPSG:4326 give 1.153688 and 1.153687), and a resampling that differs in the sixth digit gives the
        # model other input values, so other objects at its decision thresholds. Polygons go back through the
        # same scale, so the geometry stays exact.
        scale = float(f"{scale:.4g}")
        if scale < 1.0 - LEVEL_SNAP:
            warns.append(f"the image's pixels ({scale:.3g}x the size {model_name} wants) are coarser than the model's: "
                         "ran at native resolution (Seamline does not upsample)")
        scale = max(1.0, scale)
    k = 0
    for i, lv in enumerate(levels):
        if lv.downsample <= scale * (1 + LEVEL_SNAP):
            k = i if lv.downsample >= levels[k].downsample else k
    resample = scale / levels[k].downsample
    if abs(resample - 1.0) <= LEVEL_SNAP:
        resample, scale = 1.0, levels[k].downsample
    return Resolution(k, resample, scale, tuple(warns))


def working_shape(level: Level, resample: float) -> tuple[int, int]:
    """(height, width) of the working image: every level pixel is covered (the last row/column may average
    a partial footprint)."""
    if resample == 1.0:
        return level.height, level.width
    return max(1, math.ceil(level.height / resample - 1e-9)), max(1, math.ceil(level.width / resample - 1e-9))


def source_window(level: Level, resample: float, row: int, col: int, h: int, w: int) -> tuple[int, int, int, int]:
    """The level window (row, col, h, w) that working window (row, col, h, w) averages over."""
    if resample == 1.0:
        return row, col, h, w
    r0, c0 = math.floor(row * resample), math.floor(col * resample)
    r1 = min(level.height, math.ceil((row + h) * resample))
    c1 = min(level.width, math.ceil((col + w) * resample))
    return r0, c0, max(1, r1 - r0), max(1, c1 - c0)


def _axis_weights(o0: int, n: int, f: float, length: int, i0: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """For outputs o0..o0+n-1: the first input index of each footprint (relative to ``i0``) and one weight
    vector per footprint offset, normalised to sum to 1 (partial footprints at the far edge)."""
    lo = (o0 + np.arange(n, dtype=np.float64)) * f
    hi = np.minimum(lo + f, float(length))
    j0 = np.floor(lo).astype(np.int64)
    ws = []
    for k in range(int(math.ceil(f)) + 1):
        j = j0 + k
        ws.append(np.clip(np.minimum(hi, j + 1.0) - np.maximum(lo, j.astype(np.float64)), 0.0, None))
    total = np.sum(ws, axis=0)
    return j0 - i0, [w / total for w in ws]


def _resample_axis(data: np.ndarray, axis: int, o0: int, n: int, f: float, length: int, i0: int) -> np.ndarray:
    j0, ws = _axis_weights(o0, n, f, length, i0)
    size = data.shape[axis]
    out = None
    for k, w in enumerate(ws):  # fixed order: the same sum for a pixel whatever the block
        idx = np.clip(j0 + k, 0, size - 1)
        part = np.take(data, idx, axis=axis).astype(np.float64, copy=False)
        shape = [1] * data.ndim
        shape[axis] = n
        term = part * w.reshape(shape)
        out = term if out is None else out + term
    return out


def area_resample(data: np.ndarray, resample: float, row: int, col: int, h: int, w: int, level: Level,
                  dtype: str | np.dtype | None = None) -> np.ndarray:
    """Area-average a level window ``data`` (c, H, W) read by :func:`source_window` down to working window
    (row, col, h, w). Integers are rounded half to even; returns ``dtype`` (default: the input's)."""
    dtype = np.dtype(dtype or data.dtype)
    if resample == 1.0:
        return data.astype(dtype, copy=False)
    r_in, c_in, _, _ = source_window(level, resample, row, col, h, w)
    out = _resample_axis(data, 1, row, h, resample, level.height, r_in)
    out = _resample_axis(out, 2, col, w, resample, level.width, c_in)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    elif dtype.kind == "b":
        out = out >= 0.5
    return out.astype(dtype)
