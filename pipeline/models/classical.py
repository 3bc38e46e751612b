"""``--model classical``: global threshold + distance-transform watershed. No weights.

A real option for fluorescence images (bright objects on a dark background) and the deterministic model
that the stitching tests compare tiled and untiled runs with. The threshold is a *scene* statistic (Otsu
on the scene sample, unless given), so every tile uses the same one.
"""

from __future__ import annotations

import numpy as np

from pipeline.models.instances import classical_instances
from pipeline.models.learned import PendingHeads

__all__ = ["ClassicalModel"]


class ClassicalModel:
    kind = "classical"
    name = "classical"
    in_channels = 1
    halo_hint = 32

    def __init__(self, sigma: float = 1.0, h: float = 1.5, min_area: int = 8, merge_ratio: float = 0.75, threshold: float | None = None,
                 classes: list[str] | None = None):
        self.sigma, self.h, self.min_area, self.merge_ratio = sigma, h, min_area, merge_ratio
        self.threshold = threshold
        self.classes = classes or ["object"]

    def prepare(self, norm: np.ndarray) -> np.ndarray:
        """Mean of the normalised bands: one intensity channel."""
        return norm.mean(axis=0, keepdims=True) if norm.shape[0] > 1 else norm

    def predict_heads(self, batch: np.ndarray) -> np.ndarray:
        """The classical "forward pass" is the identity: the intensity is the only map."""
        return batch

    def submit_heads(self, batch: np.ndarray):
        return PendingHeads(batch)

    def instances(self, heads: np.ndarray, threshold: float | None = None, low_threshold: float | None = None) -> tuple[np.ndarray, None]:
        t = self.threshold if threshold is None else threshold
        if t is None:
            raise ValueError("classical model needs a threshold: compute scene statistics first")
        return classical_instances(heads[0], t, sigma=self.sigma, h=self.h, min_area=self.min_area, merge_ratio=self.merge_ratio,
                                   low_threshold=low_threshold), None
