"""Hard negatives: training crops drawn where the network sees objects that are not there.

A building model trained on random crops sees roads, bare soil, vehicles and courtyards only as often as they
happen to fall into a crop, and those are exactly what it outlines as buildings in a new town (on Banepa the
shipped Kampala model put blobs on roads, bare ground and the highway). Mining them is cheap: run the current
network on the training images, keep the background pixels it calls foreground — away from any labelled
object by ``margin_px``, so that an outline drawn a pixel too small is not a "negative" — and centre a share
of the crops (``share``) on them. Re-mined every ``every`` epochs with the network of that moment, so the
crops follow what it still gets wrong.

Only for labels that are complete: in an area where the map misses buildings, a mined "false positive" may be
a real roof, and the network would be taught to miss it (check coverage by overlay first; docs/MODEL.md).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from pipeline.training.samples import Sample

__all__ = ["mine_hard_negatives", "crop_origin"]


def mine_hard_negatives(model_fn: Callable[[np.ndarray], np.ndarray], samples: list[Sample], threshold: float = 0.5,
                        margin_px: int = 3, max_points: int = 20_000, seed: int = 0) -> dict[str, float]:
    """Set each sample's ``hard`` (flat pixel indices of its false-positive foreground) from ``model_fn``'s
    foreground head; returns the share of background pixels that were mined and how many samples have any.
    Box samples (no pixel truth) are left alone."""
    rng = np.random.default_rng(seed)
    mined = background = with_any = 0
    for s in samples:
        if s.boxes is not None:
            continue
        fg = model_fn(s.image[None])[0][0]
        near_truth = ndi.binary_dilation(s.labels > 0, iterations=margin_px) if margin_px else s.labels > 0
        idx = np.flatnonzero((fg > threshold) & ~near_truth)
        if len(idx) > max_points:
            idx = np.sort(rng.choice(idx, max_points, replace=False))
        s.hard = idx.astype(np.int64)
        mined += int(((fg > threshold) & ~near_truth).sum())
        background += int((~near_truth).sum())
        with_any += bool(len(idx))
    return {"share_of_background": round(mined / max(1, background), 5), "samples_with_any": with_any}


def crop_origin(s: Sample, src: int, h: int, w: int, rng: np.random.Generator, share: float) -> tuple[int, int] | None:
    """The top-left corner of a ``src``-pixel crop centred on one of ``s``'s mined pixels, with probability
    ``share``; None for a random crop (no draw at all when ``share`` is 0 or nothing was mined, so a recipe
    without hard negatives gets the crops it always got)."""
    hard = getattr(s, "hard", None)
    if not share or hard is None or len(hard) == 0 or rng.random() >= share:
        return None
    cy, cx = divmod(int(hard[rng.integers(len(hard))]), s.labels.shape[1])
    y = int(np.clip(cy - src // 2, 0, max(0, h - src)))
    x = int(np.clip(cx - src // 2, 0, max(0, w - src)))
    return y, x
