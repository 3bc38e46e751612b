"""Brightfield or fluorescence: the imaging modality of a scene, judged on its low-resolution overview.

A nuclei model learns one kind of picture: bright nuclei on a dark background (fluorescence) or dark,
stained nuclei on bright glass (brightfield H&E). Given the other kind it outlines stroma and cytoplasm
(issue #20), so the runner picks the model by the modality found here, before any full-resolution read.

Two signals, both relative to the scene's own intensity range (8-bit, 12-bit and 16-bit scans alike):

``median_level``
    where the median pixel lies between the scene's 0.5th and 99.5th percentiles of per-pixel brightness
    (the brightest channel). Light passes through glass and unstained tissue in brightfield, so most pixels
    are near the top (DSB2018 H&E and grey brightfield 0.50–0.96, CoNSeP's H&E patches median 0.73);
    fluorescence is dark where there is no dye (DSB2018 fluorescence 0.00–0.29; the DAPI NDPI 0.05).
``coloured_share``, ``he_share``
    among the pixels darker than the background, the share with colour (max − min of R, G, B, each relative
    to its own near-white level, over 0.08), and among those the share that H&E could make: haematoxylin
    and eosin both absorb green most, so green is the darkest channel and blue is brighter than green
    (purple, pink, magenta). DAB brown, green ink and fluorescence merges fail it.

The stain of a brightfield scene is ``he`` (≥ :data:`HE_SHARE` of its coloured pixels H&E-like), ``grey``
(under :data:`COLOURED` of its stained pixels coloured, or one channel) or ``other``. A georeferenced scene
is ``aerial``: not microscopy. Calibrated on all 531 DSB2018 images, CoNSeP's 656 patches and the real
slides (``bench/modality_check.py``; docs/MODEL.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["Modality", "detect_modality", "DARK_LEVEL", "BRIGHT_LEVEL", "COLOURED", "HE_SHARE"]

#: ``median_level`` at or below this: a dark background (fluorescence). DSB2018 fluorescence reaches 0.29.
DARK_LEVEL = 0.33
#: At or above this: a bright background (brightfield). DSB2018 brightfield starts at 0.50. Between the two
#: the colour decides: H&E colours make it brightfield, anything else is unknown.
BRIGHT_LEVEL = 0.40
#: A brightfield scene with fewer coloured stained pixels than this is unstained or grey.
COLOURED = 0.2
#: Share of coloured pixels that must look like H&E for the stain to be called H&E (DSB2018 he_color ≥ 0.87,
#: its other purple stains 0.72–0.94).
HE_SHARE = 0.6
CHROMA = 0.08  # max − min of the white-relative R, G, B above which a pixel counts as coloured
MIN_PIXELS = 64


@dataclass(frozen=True)
class Modality:
    """The modality found (``fluorescence``, ``brightfield``, ``aerial`` or ``unknown``), the stain of a
    brightfield scene (``he``, ``grey``, ``other``; else None), a one-line reason for the run summary and
    the numbers it rests on."""

    modality: str
    stain: str | None
    reason: str
    signals: dict[str, float] = field(default_factory=dict)

    @property
    def is_he(self) -> bool:
        """Brightfield with H&E-like staining: what an H&E nuclei model is for."""
        return self.modality == "brightfield" and self.stain == "he"

    def as_dict(self) -> dict:
        return asdict(self)


def _colour(v: np.ndarray) -> tuple[float, float, int]:
    """``(coloured_share, he_share, stained pixels)`` of (3, n) values (see the module docstring)."""
    white = np.maximum(np.percentile(v, 99.5, axis=1), 1e-9)
    t = np.clip(v / white[:, None], 0.0, 1.0)
    r, g, b = t
    stained = t.mean(axis=0) < 0.85  # darker than the background
    chroma = t.max(axis=0) - t.min(axis=0)
    coloured = stained & (chroma > CHROMA)
    he = coloured & (g <= np.minimum(r, b) + 0.02) & (b - g > 0.04)
    n_st, n_col = int(stained.sum()), int(coloured.sum())
    return (n_col / n_st if n_st else 0.0), (int(he.sum()) / n_col if n_col else 0.0), n_st


def detect_modality(overview: np.ndarray, mask: np.ndarray | None = None, georeferenced: bool = False) -> Modality:
    """The modality of a scene from its overview.

    Parameters
    ----------
    overview : ndarray, (channels, h, w)
        Raw values at low resolution, as :func:`pipeline.stages.inputs.overview` returns them (all channels
        the model would get: RGB for a slide, the selected channels of a multiplex image).
    mask : ndarray of bool, (h, w), optional
        Valid pixels (not nodata, alpha > 0); the rest is ignored.
    georeferenced : bool
        The source has a CRS: an aerial or satellite scene, never judged as microscopy.
    """
    if georeferenced:
        return Modality("aerial", None, "georeferenced (it has a CRS): an aerial or satellite scene, not microscopy")
    x = np.asarray(overview)
    if x.ndim == 2:
        x = x[None]
    v = x.reshape(x.shape[0], -1) if mask is None else x[:, np.asarray(mask, bool)]
    v = v.astype(np.float64, copy=False)
    if v.dtype.kind == "f":
        v = v[:, np.all(np.isfinite(v), axis=0)]
    if v.shape[1] < MIN_PIXELS:
        return Modality("unknown", None, f"too few valid pixels in the overview ({v.shape[1]})", {"pixels": float(v.shape[1])})
    bright = v.max(axis=0)
    lo, hi = np.percentile(bright, [0.5, 99.5])
    if hi - lo <= 0:
        return Modality("unknown", None, "the overview is one flat value", {"pixels": float(v.shape[1])})
    level = float((np.median(bright) - lo) / (hi - lo))
    sig = {"median_level": round(level, 3), "channels": float(x.shape[0])}
    coloured = he = 0.0
    if x.shape[0] == 3:
        coloured, he, _ = _colour(v)
        sig.update(coloured_share=round(coloured, 3), he_share=round(he, 3))
    he_like = coloured >= COLOURED and he >= HE_SHARE
    where = f"median at {level:.2f} of the intensity range"
    if level <= DARK_LEVEL:
        return Modality("fluorescence", None, f"dark background ({where}): fluorescence", sig)
    if level < BRIGHT_LEVEL and not he_like:
        return Modality("unknown", None, f"neither a dark nor a bright background ({where}) and no H&E colours", sig)
    bg = f"bright background ({where})" if level >= BRIGHT_LEVEL else f"mid-grey background ({where})"
    if x.shape[0] != 3:
        return Modality("brightfield", "grey", f"{bg}, {x.shape[0]} channel(s): unstained or grey brightfield", sig)
    if coloured < COLOURED:
        return Modality("brightfield", "grey", f"{bg}, {coloured:.0%} of stained pixels coloured: grey brightfield", sig)
    if he_like:
        return Modality("brightfield", "he", f"{bg}, {he:.0%} of coloured pixels pink/purple (H&E stains)", sig)
    return Modality("brightfield", "other", f"{bg}, only {he:.0%} of coloured pixels pink/purple: another stain", sig)
