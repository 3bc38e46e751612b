"""Intensity normalisation with scene-level statistics.

Percentiles are computed once per scene (or once per training image), then every tile is scaled with the
same numbers — per-tile normalisation would make seams. The high end is made robust to
empty background (:func:`robust_range`): over a mostly black slide, or in an empty channel, plain
percentiles stretch the noise into the model's input range and it outlines noise specks.
"""

from __future__ import annotations

import numpy as np
from skimage.filters import threshold_otsu

__all__ = ["otsu", "percentiles", "robust_range", "NOISE_FLOOR_SD", "EMPTY_BAND", "apply_normalization", "to_model_channels"]


#: The high end never comes closer to the low end than this many background noise SDs: a band or scene
#: without signal (an empty channel of an RGB render, a field of black background) is then not stretched
#: until its noise fills the whole range.
NOISE_FLOOR_SD = 20.0
FOREGROUND_HIGH = 99.0  # the percentile of the foreground used in a mostly empty band (DSB2018: p99.8 of all ≈ p99 of nuclei)
#: A band whose range is below this share of the widest band's is an empty channel (the red and green of a
#: DAPI slide rendered as blue, R = G = 0 plus noise): it gets the widest band's range, so stays near 0.
EMPTY_BAND = 0.05


def otsu(values: np.ndarray, nbins: int = 256) -> float | None:
    """Otsu's threshold of ``values`` (any shape; 256 bins), or None when there is none to find: no values, or
    all equal (a flat band, an empty overview). The one Otsu of the stages; each caller says what a flat input
    means for it."""
    v = np.asarray(values).ravel()
    if v.size == 0 or np.all(v == v[0]):
        return None
    return float(threshold_otsu(v, nbins=nbins))


def robust_range(v: np.ndarray, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """``(lo, hi)`` of one band's valid values, robust to empty background.

    ``lo`` is the low percentile; ``hi`` is the high percentile — unless the band is mostly background
    (less than ``100 − high`` per cent of it above Otsu's threshold), where that percentile lies in the
    noise: then ``hi`` is raised to the :data:`FOREGROUND_HIGH` percentile of the foreground and to at least
    ``lo`` plus :data:`NOISE_FLOOR_SD` noise SDs (1.4826 × MAD of the background, at least one unit of an
    integer type). On a well-filled image (all but a few DSB2018 images) this is the plain percentile range.
    """
    v = v.astype(np.float64, copy=False)
    lo, hi = (float(x) for x in np.percentile(v, [low, high]))
    t = otsu(v) if v.size >= 16 else None
    if t is not None:
        bg = v[v <= t]
        sd = 1.4826 * float(np.median(np.abs(bg - np.median(bg)))) if bg.size else 0.0
        if np.all(v == np.round(v)):
            sd = max(sd, 1.0)  # integer data: noise of at least one unit
        fg = v[v > t]
        if fg.size < (100.0 - high) / 100.0 * v.size:  # mostly background: its high percentile is noise
            if fg.size:
                hi = max(hi, float(np.percentile(fg, FOREGROUND_HIGH)))
            hi = max(hi, lo + NOISE_FLOOR_SD * sd)
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def percentiles(sample: np.ndarray, low: float = 1.0, high: float = 99.8, nodata=None) -> list[tuple[float, float]]:
    """Per-band ``(lo, hi)`` of a (bands, H, W) sample, ignoring nodata (:func:`robust_range`)."""
    out = []
    for band in sample:
        v = band.ravel()
        if nodata is not None:
            v = v[v != nodata]
        if v.size == 0:
            out.append((0.0, 1.0))
            continue
        out.append(robust_range(v, low, high))
    widest = max(hi - lo for lo, hi in out)
    return [(lo, hi) if hi - lo >= EMPTY_BAND * widest else (lo, lo + widest) for lo, hi in out]


def apply_normalization(data: np.ndarray, stats: list[tuple[float, float]] | list[list[float]]) -> np.ndarray:
    """Scale (bands, H, W) to float32 with ``lo → 0`` and ``hi → 1`` per band, clipped to [0, 1]."""
    out = np.empty(data.shape, np.float32)
    for i, (lo, hi) in enumerate(stats):
        np.subtract(data[i], lo, out=out[i], dtype=np.float32, casting="unsafe")
        out[i] *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def to_model_channels(norm: np.ndarray, in_channels: int) -> np.ndarray:
    """Adapt (bands, H, W) to the network's channel count: repeat a single band, drop extra (alpha) bands."""
    b = norm.shape[0]
    if b == in_channels:
        return norm
    if b == 1:
        return np.repeat(norm, in_channels, axis=0)
    if b > in_channels:
        return norm[:in_channels]
    pad = np.repeat(norm[-1:], in_channels - b, axis=0)
    return np.concatenate([norm, pad], axis=0)
