"""What kind of picture an image is, in the terms a model's training domain is recorded in: its modality label and
the colour of its pixels as the model sees them. One owner for both sides of the comparison — the training
images (:mod:`pipeline.training.domain`, at ``seamline train`` / ``seamline model-card``) and a run's scene
(the ingest sample, :func:`pipeline.stages.ingest.scene_statistics`) — so that the quality verdict
(:mod:`pipeline.stages.quality`) compares like with like.

``modality``
    :func:`pipeline.stages.modality.detect_modality` on the **raw** values (the stain test needs the
    image's own colour balance, which the per-band normalisation changes: on normalised values 55 of
    DSB2018's 75 H&E images no longer look H&E), as one label: ``fluorescence``, ``brightfield-he``,
    ``brightfield-grey``, ``brightfield-other``, ``aerial`` (georeferenced) or ``unknown``. A dark image
    with colour (a shaded aerial chip: one Banepa chip of 30) is not called fluorescence: fluorescence as the
    models see it is one grey channel, so a "fluorescence" image whose median chroma exceeds
    :data:`FLUORESCENCE_MAX_CHROMA` is ``unknown``.
``colour``
    quantiles of CIE L*a*b* (L* lightness 0–100; a* green−/red+; b* blue−/yellow+; chroma C* = |a*, b*|) of
    the **normalised** model-channel pixels, read as sRGB: ``L_p05 L_p50 L_p95 a_p50 b_p50 C_p50 C_p95``.
    Lab is perceptual — a difference of 10 is plainly visible whatever the colour — so distances in it can
    be judged in one unit. A one-channel image is grey (a* = b* = 0).
``channels``
    per model channel, the 5th, 50th and 95th percentiles of the normalised values (0..1): recorded for
    people and for later rules; the verdict uses the Lab quantiles.
"""

from __future__ import annotations

import numpy as np

from pipeline.stages.modality import Modality, detect_modality

__all__ = ["LABELS", "WORDS", "COLOUR_KEYS", "detect", "modality_label", "colour_features", "channel_quantiles", "image_domain",
           "FLUORESCENCE_MAX_CHROMA", "MAX_PIXELS"]

LABELS = ("fluorescence", "brightfield-he", "brightfield-grey", "brightfield-other", "aerial", "unknown")
#: How each label reads in a reason ("brightfield H&E input; the model was trained on fluorescence").
WORDS = {"fluorescence": "fluorescence", "brightfield-he": "brightfield H&E", "brightfield-grey": "grey brightfield",
         "brightfield-other": "colour image (another stain, or aerial RGB without georeferencing)", "aerial": "aerial RGB",
         "unknown": "unknown"}
COLOUR_KEYS = ("L_p05", "L_p50", "L_p95", "a_p50", "b_p50", "C_p50", "C_p95")
#: DSB2018's 433 fluorescence images and the DAPI slide have chroma 0 (grey); the darkest Banepa chip 6.0.
FLUORESCENCE_MAX_CHROMA = 3.0
#: Pixels the statistics are computed on (a fixed stride over the sample): quantiles are stable far below this.
MAX_PIXELS = 1 << 17


def _subsample(v: np.ndarray, n: int = MAX_PIXELS) -> np.ndarray:
    """(c, N) → (c, ≤ n) by a fixed stride: deterministic, so a run and its re-run agree."""
    step = max(1, -(-v.shape[1] // n))
    return v[:, ::step]


def modality_label(m: Modality) -> str:
    """One label for a :class:`~pipeline.stages.modality.Modality` (module docstring)."""
    if m.modality == "brightfield":
        return f"brightfield-{m.stain or 'other'}"
    return m.modality if m.modality in LABELS else "unknown"


def colour_features(norm: np.ndarray) -> dict[str, float]:
    """Lab quantiles (module docstring) of normalised model-channel values ``norm`` (c, N) or (c, h, w) in 0..1."""
    from skimage.color import rgb2lab

    v = _subsample(np.asarray(norm, np.float32).reshape(norm.shape[0], -1))
    if v.shape[1] == 0:
        return {}
    rgb = v[:3] if v.shape[0] >= 3 else np.repeat(v[:1], 3, axis=0)
    lab = rgb2lab(np.clip(rgb, 0, 1).T[None].astype(np.float64))[0]
    L, a, b = lab.T
    c = np.hypot(a, b)
    q = {"L_p05": np.percentile(L, 5), "L_p50": np.median(L), "L_p95": np.percentile(L, 95),
         "a_p50": np.median(a), "b_p50": np.median(b), "C_p50": np.median(c), "C_p95": np.percentile(c, 95)}
    return {k: round(float(x), 2) + 0.0 for k, x in q.items()}  # + 0.0: no "-0.0" in the JSON


def channel_quantiles(norm: np.ndarray) -> list[list[float]]:
    """Per channel ``[p05, p50, p95]`` of normalised values (c, N) or (c, h, w)."""
    v = _subsample(np.asarray(norm, np.float32).reshape(norm.shape[0], -1))
    if v.shape[1] == 0:
        return []
    return [[round(float(x), 4) for x in np.percentile(ch, [5, 50, 95])] for ch in v]


def detect(raw: np.ndarray, georeferenced: bool = False) -> Modality:
    """:func:`~pipeline.stages.modality.detect_modality` of raw values (c, h, w), or of a sample's valid pixels
    (c, N), on at most a million of them."""
    raw = np.asarray(raw)
    v = raw.reshape(raw.shape[0], -1)
    return detect_modality(_subsample(v, 1 << 20)[:, None, :], None, georeferenced)


def image_domain(m: Modality, norm: np.ndarray) -> dict:
    """The domain description of one image or scene sample.

    Parameters
    ----------
    m : Modality
        :func:`detect` of the raw pixels (the channels the model gets, before normalisation).
    norm : ndarray, (c, h, w) or (c, N)
        The same pixels as the model sees them: normalised (0..1), adapted to its channel count.

    Returns
    -------
    dict
        ``modality`` (a label of :data:`LABELS`), ``modality_reason``, ``colour`` and ``channels``.
    """
    colour = colour_features(norm)
    label = modality_label(m)
    reason = m.reason
    if label == "fluorescence" and colour.get("C_p50", 0.0) > FLUORESCENCE_MAX_CHROMA:
        label = "unknown"
        reason = f"{m.reason}, but coloured (median chroma {colour['C_p50']:.0f}): not fluorescence as the models see it"
    return {"modality": label, "modality_reason": reason, "colour": colour, "channels": channel_quantiles(norm)}
