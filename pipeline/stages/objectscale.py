"""The object-diameter route of the resolution rule: rescale a scene so that its objects come out the size
the model was trained on.

A nuclei model trained on DSB2018 has seen nuclei of about 18 px (``object_diameter_px`` in its
checkpoint); a 40x slide shows them 35 px across, a 20x one 17 px, a 60x one 50 px. A U-Net with a bounded
receptive field segments objects far from its training size badly (fragments, clumps; Cellpose's answer is
its ``diam_mean`` and rescaling every image to it). The factor ``f`` (working px per input px) comes from,
in order:

1. config ``object_diameter`` — the objects' diameter in input pixels, given by the user:
   ``f = object_diameter_px / object_diameter``;
2. the pixel size, when the scene has one and the model states its nominal object size in µm
   (``object_diameter_um``): ``f = pixel_size_um · object_diameter_px / object_diameter_um``;
3. with ``object_diameter: estimate``, an estimate from the image itself (:func:`estimate_diameter`, on
   full-resolution windows at fixed places of the scene — never per tile). Not the default: on DSB2018
   validation it lowered fluorescence AP@0.5 from 0.793 to 0.694 (bench/dsb_object_scale.py), so a scene
   without a pixel size runs at native resolution unless asked.

Factors within :data:`TOLERANCE` of 1 are taken as 1 (no resampling for a few per cent); factors above 1
(objects smaller than the model's) too, with a warning: the resolution rule
(:mod:`pipeline.stages.resolution`, which gets ``1 / f`` as its ``extra_scale`` and picks the pyramid
level and the area averaging) never upsamples. A model without ``object_diameter_px`` (classical, older
checkpoints) runs at native resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pipeline.models.normalize import apply_normalization, otsu, percentiles

__all__ = ["ObjectScale", "choose_scale", "estimate_diameter", "estimate_scene_diameter", "window_positions", "TOLERANCE", "ESTIMATE_GAIN"]

TOLERANCE = 0.15  # |f − 1| below this: run at native resolution (well inside the training scale jitter)
MIN_FACTOR, MAX_FACTOR = 1 / 64, 1.0  # the resolution rule shrinks only (no upsampling)
#: Median over the 451 DSB2018 training images of (true median equivalent diameter / raw estimate); 80 % of
#: the images lie within 0.79–1.24 of it. The raw estimate (twice the largest inscribed radius per object)
#: sees the short axis of elongated nuclei. On the DAPI test slide (nuclei ~35 px) it gives 42 px.
ESTIMATE_GAIN = 1.09


@dataclass(frozen=True)
class ObjectScale:
    """The chosen factor (working px per input px), where it came from, the scene's object diameter in input
    px that it implies, and warnings for the run summary."""

    factor: float
    source: str  # "config" | "pixel_size" | "estimate" | "native" | "model" (model has no nominal size)
    scene_diameter_px: float | None = None
    model_diameter_px: float | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"factor": round(self.factor, 5), "source": self.source,
                "scene_object_diameter_px": None if self.scene_diameter_px is None else round(self.scene_diameter_px, 2),
                "model_object_diameter_px": self.model_diameter_px}


def _clamp(f: float, warnings: list[str] | None = None) -> float:
    if f > 1.0 + TOLERANCE and warnings is not None:
        warnings.append(f"object size: the objects are {f:.2g}x smaller than the model's nominal size, and Seamline "
                        "does not upsample: running at native resolution")
    f = min(MAX_FACTOR, max(MIN_FACTOR, f))
    return 1.0 if abs(f - 1.0) < TOLERANCE else f


def choose_scale(md: dict | None, pixel_size_um: tuple[float, float] | None, object_diameter: float | str | None,
                 estimate: Callable[[], float | None]) -> ObjectScale:
    """The working-grid factor for one scene (see the module docstring for the order of the routes).

    ``object_diameter``: config override in input px, ``"native"`` for no rescaling, ``"estimate"`` to
    estimate it from the image when there is no pixel size, or None (pixel size, else native).
    ``estimate``: called only when needed; returns the scene's object diameter in input px, or None.
    """
    d_model = float(md["object_diameter_px"]) if md and md.get("object_diameter_px") else None
    if object_diameter == "native":
        return ObjectScale(1.0, "native", None, d_model)
    if d_model is None:
        warn = [] if object_diameter is None else [
            "object_diameter is set but the model states no object_diameter_px: running at native resolution"]
        return ObjectScale(1.0, "model", None, None, warn)
    if object_diameter not in (None, "estimate"):
        d = float(object_diameter)
        w: list[str] = []
        return ObjectScale(_clamp(d_model / d, w), "config", d, d_model, w)
    d_um = float(md["object_diameter_um"]) if md.get("object_diameter_um") else None
    if pixel_size_um and d_um:
        px = math.sqrt(pixel_size_um[0] * pixel_size_um[1])
        d = d_um / px
        w = []
        return ObjectScale(_clamp(d_model / d, w), "pixel_size", d, d_model, w)
    if object_diameter != "estimate":
        # Measured on DSB2018 validation (bench/dsb_object_scale.py): rescaling every image by its own estimate
        # lowered fluorescence AP@0.5 from 0.793 to 0.694 — the model does best on DSB-like images at their
        # own size. So without a pixel size the scene runs natively unless asked to estimate.
        return ObjectScale(1.0, "native", None, d_model)
    d = estimate()
    if d is None:
        return ObjectScale(1.0, "native", None, d_model, [
            "object size: no pixel size and too few objects to estimate it; running at native resolution "
            "(set object_diameter in px to rescale)"])
    w = [f"object size estimated from the image: {d:.1f} px across (no pixel size); set object_diameter to override"]
    return ObjectScale(_clamp(d_model / d, w), "estimate", d, d_model, w)


def window_positions(height: int, width: int, size: int = 512, grid: int = 3) -> list[tuple[int, int, int, int]]:
    """Up to ``grid × grid`` windows (row, col, h, w) spread evenly over the scene — a function of the scene
    size only, so the estimate does not depend on the tiling."""
    h, w = min(size, height), min(size, width)
    rows = sorted({int(round(r)) for r in np.linspace(0, height - h, grid)})
    cols = sorted({int(round(c)) for c in np.linspace(0, width - w, grid)})
    return [(r, c, h, w) for r in rows for c in cols]


def _raw_diameters(grey: np.ndarray, threshold: float, min_area: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Twice the largest inscribed radius of each connected object above ``threshold``, and its area.

    Clumps of touching nuclei count as one object, but their inscribed radius is still one nucleus's, so the
    estimate is not inflated by touching nuclei as an area-based one would be.
    """
    from scipy import ndimage as ndi

    mask = grey > threshold
    lab, n = ndi.label(mask)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    areas = np.bincount(lab.ravel(), minlength=n + 1)
    edt = ndi.distance_transform_edt(mask)
    rmax = np.asarray(ndi.maximum(edt, lab, index=np.arange(1, n + 1)))
    keep = areas[1:] >= min_area
    return 2.0 * rmax[keep], areas[1:][keep].astype(np.float64)


def estimate_diameter(windows: list[np.ndarray], threshold: float | None = None, min_objects: int = 5) -> float | None:
    """The (area-weighted) median object diameter (px) over normalised grey windows (each (H, W) in 0..1), or None when
    fewer than ``min_objects`` objects are found.

    Objects are the connected regions above Otsu's threshold of the pooled windows (or ``threshold``);
    where more than half the pixels are above it the objects are dark on a bright background
    (brightfield), and the windows are inverted.
    """
    windows = [np.asarray(w, np.float64) for w in windows if w.size]
    if not windows:
        return None
    pooled = np.concatenate([w.ravel() for w in windows])
    if threshold is None:
        threshold = otsu(pooled)
        if threshold is None:
            return None
    if (pooled > threshold).mean() > 0.5:
        windows, threshold = [1.0 - w for w in windows], 1.0 - threshold
    parts = [_raw_diameters(w, threshold) for w in windows]
    d = np.concatenate([p[0] for p in parts])
    a = np.concatenate([p[1] for p in parts])
    if d.size < min_objects:
        return None
    # The area-weighted median: the diameter of the objects that hold half the foreground. Noise specks
    # and fragments, many but small, would drag a plain median down (on the DAPI slide to half the size).
    order = np.argsort(d, kind="stable")
    cum = np.cumsum(a[order])
    return float(d[order][np.searchsorted(cum, cum[-1] / 2)] * ESTIMATE_GAIN)


def estimate_scene_diameter(read: Callable[[int, int, int, int], np.ndarray], height: int, width: int,
                            nodata=None) -> float | None:
    """:func:`estimate_diameter` on full-resolution windows at :func:`window_positions` of a scene.

    ``read(row, col, height, width)`` returns (bands, h, w). The windows are normalised with their pooled
    statistics (:func:`~pipeline.models.normalize.percentiles`) and averaged over bands to grey.
    """
    wins = [read(*pos) for pos in window_positions(height, width)]
    pooled = np.concatenate([w.reshape(w.shape[0], -1) for w in wins], axis=1)
    stats = percentiles(pooled[:, :, None], nodata=nodata)
    return estimate_diameter([apply_normalization(w, stats).mean(axis=0) for w in wins])
