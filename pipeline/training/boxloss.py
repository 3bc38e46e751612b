"""Box-supervised training of the three instance heads (tree crowns from boxes).

A box says where a crown is, not its outline. What it does say, exactly:

1. **every pixel outside every box is background** — a plain BCE towards 0 there;
2. **the crown touches the box's four sides** — BoxInst's projection loss: the maxima of the foreground
   probability along each column of the box (and each row) must be 1 across the whole box width (height);
   a soft Dice on those two projections;

and, as a weak prior where the box says nothing certain,

3. **the middle of the box is crown** — the inscribed ellipse shrunk to half its axes is a positive
   (crowns are compact; this keeps the projection loss from being met by a thin cross);
4. **instance separation** — the boundary and distance heads learn from inscribed ellipses (one per box,
   smaller boxes drawn on top): their distance crest sits at the box centre, so the marker watershed finds
   one marker per crown and floods it over the foreground the projection loss shaped.

The foreground head, which sets the outline, is therefore never pulled towards the ellipse outside its
core: the crown's extent comes from the box sides and the image, not from a drawn shape.
"""

from __future__ import annotations

import numpy as np

from pipeline.training.config import AugmentConfig
from pipeline.training.data import _resample, class_head_loss, jitter_intensity, make_targets
from pipeline.training.samples import Sample

__all__ = ["BoxAugmenter", "ellipse_labels", "box_losses"]


def ellipse_labels(boxes: np.ndarray, shape: tuple[int, int], shrink: float = 1.0) -> np.ndarray:
    """Instance labels of the ellipses inscribed in ``boxes`` (axes × ``shrink``); smaller boxes on top."""
    h, w = shape
    lab = np.zeros(shape, np.int32)
    if len(boxes) == 0:
        return lab
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    yy = np.arange(h)[:, None] + 0.5
    xx = np.arange(w)[None, :] + 0.5
    for i in np.argsort(-areas):
        x0, y0, x1, y1 = boxes[i]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        rx, ry = max(0.5, (x1 - x0) / 2 * shrink), max(0.5, (y1 - y0) / 2 * shrink)
        r0, r1 = max(0, int(cy - ry)), min(h, int(np.ceil(cy + ry)) + 1)
        c0, c1 = max(0, int(cx - rx)), min(w, int(np.ceil(cx + rx)) + 1)
        inside = ((xx[:, c0:c1] - cx) / rx) ** 2 + ((yy[r0:r1] - cy) / ry) ** 2 <= 1.0
        lab[r0:r1, c0:c1][inside] = i + 1
    return lab


class BoxAugmenter:
    """Random crop with scale jitter, flips, 90° rotations, intensity jitter (``augment``: the same
    :class:`~.config.AugmentConfig` as polygon training) — boxes transformed alike.

    Returns ``(image, targets, boxes)``: targets (4, crop, crop) = inside-any-box mask, ellipse boundary,
    ellipse distance, ellipse core; boxes (M, 4) integer pixel edges within the crop.
    """

    def __init__(self, crop: int, seed: int, scale: tuple[float, float] = (0.75, 1.33), mode: str = "projection",
                 n_classes: int = 1, augment=None):
        self.crop, self.scale, self.mode, self.n_classes = crop, scale, mode, n_classes
        self.aug = augment or AugmentConfig()
        self.rng = np.random.default_rng(seed)

    def __call__(self, s: Sample):
        rng, S = self.rng, self.crop
        img = s.image
        h, w = img.shape[1:]
        f = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
        src = max(8, int(round(S / f)))
        if h < src or w < src:
            ph, pw = max(0, src - h), max(0, src - w)
            img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="constant")
            h, w = img.shape[1:]
        y = int(rng.integers(0, h - src + 1))
        x = int(rng.integers(0, w - src + 1))
        img = img[:, y : y + src, x : x + src]
        b = s.boxes.astype(np.float64) - [x, y, x, y]
        b = np.clip(b, 0, src) * (S / src)
        if src != S:
            img, _ = _resample(img, np.zeros((src, src), np.int32), S)
        for _ in range(int(rng.integers(0, 4))):  # np.rot90: new (x0, y0, x1, y1) = (y0, S - x1, y1, S - x0)
            img = np.rot90(img, 1, axes=(1, 2))
            b = np.stack([b[:, 1], S - b[:, 2], b[:, 3], S - b[:, 0]], axis=1)
        if rng.random() < 0.5:
            img = img[:, :, ::-1]
            b = np.stack([S - b[:, 2], b[:, 1], S - b[:, 0], b[:, 3]], axis=1)
        b = np.round(b).astype(np.int64).reshape(-1, 4)
        ok = (b[:, 2] - b[:, 0] >= 2) & (b[:, 3] - b[:, 1] >= 2)
        b = b[ok]
        # a multi-class sample: each remaining box's class index (label i + 1 of the ellipse maps below)
        box_cls = s.instance_classes[1:][ok] if (self.n_classes > 1 and s.instance_classes is not None) else None
        img = jitter_intensity(img, rng, self.aug)
        if self.mode == "ellipse":  # the simpler baseline: inscribed ellipses as instance masks, standard losses
            lab = ellipse_labels(b.astype(np.float64), (S, S))
            inst = None if box_cls is None else np.concatenate([[-1], box_cls])
            return (np.ascontiguousarray(img, dtype=np.float32), make_targets(lab, inst, self.n_classes if inst is not None else 1),
                    np.ones((S, S), np.float32))
        inside = np.zeros((S, S), np.float32)
        for x0, y0, x1, y1 in b:
            inside[y0:y1, x0:x1] = 1
        ell = make_targets(ellipse_labels(b.astype(np.float64), (S, S)))
        core_lab = ellipse_labels(b.astype(np.float64), (S, S), shrink=0.5)
        core = (core_lab > 0).astype(np.float32)
        heads = [inside, ell[1], ell[2], core]
        if box_cls is not None:  # class targets on the box cores, where the box surely is its object
            cls_map = np.concatenate([[-1], box_cls])[core_lab]
            heads += [(cls_map == k).astype(np.float32) for k in range(self.n_classes)]
        targets = np.stack(heads)
        return np.ascontiguousarray(img, dtype=np.float32), targets, b


def box_losses(logits, targets, boxes: list[np.ndarray], pos_weight_boundary: float = 4.0, core_weight: float = 0.5):
    """Loss of a batch of box-supervised crops (see the module docstring); ``boxes[i]`` those of crop ``i``."""
    import torch
    import torch.nn.functional as F

    fg_l, bnd_l, dist_l = logits[:, 0], logits[:, 1], logits[:, 2]
    inside, bnd_t, dist_t, core = targets[:, 0], targets[:, 1], targets[:, 2], targets[:, 3]
    outside = 1 - inside
    bce0 = F.binary_cross_entropy_with_logits(fg_l, torch.zeros_like(fg_l), reduction="none")
    bce1 = F.binary_cross_entropy_with_logits(fg_l, torch.ones_like(fg_l), reduction="none")
    # Mean over the pixels each term is about: the background term must hold its own against the projection
    # term, which only ever pushes the foreground up (normalised by all pixels it was too weak: foreground
    # spread over the understory between the boxes).
    loss = (bce0 * outside).sum() / outside.sum().clamp(min=1) + core_weight * (bce1 * core).sum() / core.sum().clamp(min=1)
    p = torch.sigmoid(fg_l)
    proj, count = p.new_zeros(()), 0
    for i, bx in enumerate(boxes):
        for x0, y0, x1, y1 in bx.tolist():
            region = p[i, y0:y1, x0:x1]
            for prof in (region.amax(0), region.amax(1)):
                proj = proj + 1 - 2 * prof.sum() / (prof.sum() + prof.numel())  # Dice against all ones
            count += 2
    if count:
        loss = loss + proj / count
    pos_w = torch.tensor(pos_weight_boundary, device=logits.device)
    loss = loss + F.binary_cross_entropy_with_logits(bnd_l, bnd_t, pos_weight=pos_w)
    loss = loss + 2.0 * F.binary_cross_entropy_with_logits(dist_l, dist_t)
    if logits.shape[1] > 3 and targets.shape[1] > 4:  # class heads: on the box cores
        loss = loss + class_head_loss(logits[:, 3:], targets[:, 4:], core)
    return loss
