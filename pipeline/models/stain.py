"""Brightfield stains: optical density, H&E colour deconvolution, stain jitter, and the input an H&E model gets.

Brightfield light is absorbed: by Beer–Lambert, the optical density ``OD = −ln(I / I_white)`` of a pixel is the
sum of each stain's concentration times its OD colour vector. Colour deconvolution (Ruifrok & Johnston 2001)
inverts that 3 × 3 mixing for haematoxylin (nuclei), eosin (cytoplasm, stroma) and a third, residual vector;
the stain vectors are scikit-image's (``skimage.color.rgb_from_hed``), the usual published ones.

Two uses:

* **Stain jitter** for training (:func:`hed_jitter`; Tellez et al. 2018): each stain's concentration is scaled
  and shifted at random, which imitates other labs' staining and other scanners' colour far better than RGB
  gain jitter, because it moves colours along the stains, as real variation does.
* **The model input** an H&E checkpoint names in its JSON (``"input"``; :func:`model_input`), applied by
  training and inference alike to the normalised window:

  ``bands`` (the default, every checkpoint without the key)
      the bands as the scene normalisation gives them (percentiles per band and scene).
  ``rgb``
      the RGB transmission, ``I / white`` (the checkpoint's ``normalization`` is ``fixed``: 0 → 0, the white
      point → 1, the same for every scene — brightfield intensities are absolute, relative to the light).
  ``hematoxylin``
      the haematoxylin concentration (fixed normalisation first), scaled by :data:`H_SCALE` to about 0..1,
      as one band: a stain-invariant, fluorescence-like picture of the nuclei (bright on dark).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

__all__ = ["INPUTS", "H_SCALE", "optical_density", "to_stains", "from_stains", "hed_jitter", "model_input",
           "input_kind", "fixed_percentiles"]

INPUTS = ("bands", "rgb", "hematoxylin")
#: The darkest transmission taken into account (one 8-bit grey level): OD is at most ln 255 ≈ 5.5.
MIN_TRANSMISSION = 1.0 / 255.0
#: Haematoxylin OD that maps to 1 in the ``hematoxylin`` input: over CoNSeP's training patches the 99th percentile
#: is 1.7 and the 99.8th 2.6 (dense nuclei); higher values are clipped.
H_SCALE = 2.0


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) transmission in 0..1 (``I / white``) → optical density ``−ln I``, float32, ≥ 0."""
    return -np.log(np.clip(rgb, MIN_TRANSMISSION, 1.0, dtype=np.float32))


def to_stains(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) transmission → (3, H, W) haematoxylin, eosin and residual concentrations (OD units; may be
    slightly negative where a colour lies outside the three stains' cone)."""
    od = optical_density(rgb)
    return np.einsum("chw,cs->shw", od, hed_from_rgb.astype(np.float32)).astype(np.float32, copy=False)


def from_stains(stains: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_stains`: (3, H, W) concentrations → transmission in 0..1."""
    od = np.einsum("shw,sc->chw", stains, rgb_from_hed.astype(np.float32))
    return np.clip(np.exp(-od), 0.0, 1.0).astype(np.float32, copy=False)


def hed_jitter(rgb: np.ndarray, rng: np.random.Generator, alpha: tuple[float, float] = (0.75, 1.25),
               beta: tuple[float, float] = (-0.05, 0.05)) -> np.ndarray:
    """Stain jitter (Tellez et al. 2018): each stain's concentration ``c`` becomes ``a·c + b``, ``a`` drawn
    from ``alpha`` and ``b`` (OD units) from ``beta``, per stain; back to transmission in 0..1.

    A shift ``b`` tints the glass as well (a bluish or pinkish background), as a real stain or scanner does."""
    a = rng.uniform(*alpha, size=(3, 1, 1)).astype(np.float32)
    b = rng.uniform(*beta, size=(3, 1, 1)).astype(np.float32)
    return from_stains(to_stains(rgb) * a + b)


def input_kind(meta: dict[str, Any] | None) -> str:
    """The model input a checkpoint's JSON names (``"input"``; ``bands`` when it names none)."""
    kind = (meta or {}).get("input", "bands")
    if kind not in INPUTS:
        from pipeline.errors import CheckpointError

        raise CheckpointError(f"checkpoint input {kind!r}: expected one of {', '.join(INPUTS)}; re-train it or fix its JSON")
    return kind


def model_input(norm: np.ndarray, kind: str) -> np.ndarray:
    """The network's input from a normalised (bands, H, W) window: the one transform that training and
    inference share (see the module docstring for the kinds). ``bands`` and ``rgb`` return ``norm`` itself;
    ``hematoxylin`` needs three bands (RGB transmission) and returns one."""
    if kind in ("bands", "rgb"):
        return norm
    if kind == "hematoxylin":
        if norm.shape[0] < 3:
            from pipeline.errors import InputError

            raise InputError(f"an H&E model with input 'hematoxylin' needs an RGB image; found {norm.shape[0]} band(s)")
        h = to_stains(norm[:3])[0]
        return np.clip(h * np.float32(1.0 / H_SCALE), 0.0, 1.0)[None]
    raise ValueError(f"unknown model input {kind!r}; expected one of {INPUTS}")


def fixed_percentiles(meta: dict[str, Any] | None, dtype, bands: int) -> list[tuple[float, float]] | None:
    """The scene statistics to use instead of percentiles for a checkpoint whose ``normalization`` is
    ``fixed`` (every brightfield H&E input but ``bands``): ``(0, white)`` per band, white = the JSON's
    ``white`` or the largest value of an integer ``dtype`` (255 for 8-bit scans), 1.0 for floats. ``None``
    for percentile-normalised checkpoints."""
    norm = (meta or {}).get("normalization") or {}
    if norm.get("method") != "fixed":
        return None
    white = norm.get("white")
    if white is None:
        dt = np.dtype(dtype)
        white = float(np.iinfo(dt).max) if dt.kind in "ui" else 1.0
    return [(0.0, float(white))] * bands
