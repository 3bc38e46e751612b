"""Intensity normalisation with scene-level statistics.

Percentiles are computed once per scene (or once per training image), then every tile is scaled with the
same numbers — per-tile normalisation would make seams (NOTES lesson 4).
"""

from __future__ import annotations

import numpy as np

__all__ = ["percentiles", "apply_normalization", "to_model_channels"]


def percentiles(sample: np.ndarray, low: float = 1.0, high: float = 99.8, nodata=None) -> list[tuple[float, float]]:
    """Per-band ``(lo, hi)`` of a (bands, H, W) sample, ignoring nodata."""
    out = []
    for band in sample:
        v = band.ravel()
        if nodata is not None:
            v = v[v != nodata]
        if v.size == 0:
            out.append((0.0, 1.0))
            continue
        lo, hi = np.percentile(v.astype(np.float64), [low, high])
        if hi <= lo:
            hi = lo + 1.0
        out.append((float(lo), float(hi)))
    return out


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
