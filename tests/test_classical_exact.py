"""The classical model's instance step, made to cost in proportion to its objects (issue #29), labels every
pixel exactly as the straightforward whole-window version kept here as the reference: hysteresis means over
the whole window, distance transform and h-maxima over the whole window, one watershed and one basin merge
per component. Compared label for label on real DSB2018 images, on generated dense, sparse and dim-object
windows, and on small random windows full of ties (plateaus, diagonal contacts, objects on the edges), with
the packed canvas forced on and off."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import shared
from PIL import Image
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

import pipeline.models.packed as packed
from pipeline.models.instances import _drop_small, classical_instances
from pipeline.models.normalize import apply_normalization
from pipeline.stages.ingest import scene_statistics
from pipeline.synthetic import render, scene_blobs, varied_brightness_scene


def _ref_merge(w, height, ratio):
    ids = np.unique(w)
    ids = ids[ids != 0]
    if ids.size < 2:
        return w
    peak = dict(zip(ids.tolist(), np.asarray(ndi.maximum(height, w, ids)).tolist()))
    saddle: dict = {}
    for a, b, ha, hb in ((w[:, :-1], w[:, 1:], height[:, :-1], height[:, 1:]),
                         (w[:-1, :], w[1:, :], height[:-1, :], height[1:, :])):
        sel = (a != b) & (a > 0) & (b > 0)
        la, lb = np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel])
        for x, y, v in zip(la.tolist(), lb.tolist(), np.minimum(ha[sel], hb[sel]).tolist()):
            if v > saddle.get((x, y), -np.inf):
                saddle[(x, y)] = v
    parent = {i: i for i in ids.tolist()}

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for (x, y), v in sorted(saddle.items(), key=lambda kv: -kv[1] / max(min(peak[kv[0][0]], peak[kv[0][1]]), 1e-9)):
        rx, ry = find(x), find(y)
        if rx != ry and v >= ratio * min(peak[rx], peak[ry]):
            parent[max(rx, ry)] = min(rx, ry)
            peak[min(rx, ry)] = max(peak[rx], peak[ry])
    lut = np.zeros(int(ids.max()) + 1, w.dtype)
    for i in ids.tolist():
        lut[i] = find(i)
    return lut[w]


def reference(image, threshold, *, sigma=1.0, h=1.5, min_area=8, merge_ratio=0.75, low_threshold=None):
    """classical_instances as first written: every step over the whole window, one region at a time."""
    img = ndi.gaussian_filter(image.astype(np.float32, copy=False), sigma) if sigma > 0 else image
    fg = img > threshold
    if low_threshold is not None and low_threshold < threshold:
        low = img > low_threshold
        comp, n = ndi.label(low)
        mean = np.bincount(comp.ravel(), img.ravel().astype(np.float64), n + 1) / np.maximum(np.bincount(comp.ravel(), minlength=n + 1), 1)
        dim = mean <= threshold
        dim[0] = False
        fg = np.where(dim[comp], low, fg)
    if not fg.any():
        return np.zeros(image.shape, np.uint32)
    dist = ndi.distance_transform_edt(fg).astype(np.float32)
    dist_q = np.minimum(np.round(dist * 4), 65535).astype(np.uint16)
    markers, _ = ndi.label(h_maxima(dist_q, max(1, int(round(h * 4)))).astype(bool) & fg)
    comp, n = ndi.label(fg)
    out = np.zeros(fg.shape, np.uint32)
    for c, sl in enumerate(ndi.find_objects(comp), start=1):
        sub = comp[sl] == c
        ids = np.unique(markers[sl][sub])
        ids = ids[ids > 0]
        if ids.size == 1:
            out[sl][sub] = ids[0]
        elif ids.size > 1:
            w = watershed(-dist[sl], np.where(sub, markers[sl], 0), mask=sub, connectivity=1)
            out[sl][sub] = _ref_merge(w, dist[sl], merge_ratio)[sub].astype(np.uint32)
    return _drop_small(out, min_area)


def _assert_same(image, threshold, low_threshold, **kw):
    ref = reference(image, threshold, low_threshold=low_threshold, **kw)
    got = classical_instances(image, threshold, low_threshold=low_threshold, **kw)
    assert got.dtype == ref.dtype
    assert np.array_equal(got, ref), f"{int((got != ref).sum())} pixels differ ({len(np.unique(ref)) - 1} objects)"
    return len(np.unique(ref)) - 1


@pytest.fixture(params=["default", "always", "never"])
def packing(request, monkeypatch):
    """The canvas as shipped, forced on for any window, and off (the whole-window fallback)."""
    share = {"default": packed.PACK_MAX_SHARE, "always": 1e9, "never": 0.0}[request.param]
    monkeypatch.setattr(packed, "PACK_MAX_SHARE", share)
    return request.param


def _window(cell: int, seed: int, size: int = 384, noise: float = 0.02) -> np.ndarray:
    """A generated fluorescence window (the benchmark's objects) normalised with its own scene statistics."""
    img, _ = render(scene_blobs(size, size, cell=cell, seed=seed), 0, size, size)
    raw = (np.clip(img + 0.05 + np.random.default_rng(seed).normal(0, noise, img.shape), 0, None) * 4000).astype(np.uint16)[None]
    return raw


def _stats_and_norm(raw):
    st = scene_statistics([raw.reshape(raw.shape[0], -1)[:, ::3]], low_ratio=0.5)
    return apply_normalization(raw, st["percentiles"])[0], st["threshold"], st["threshold_low"]


@pytest.mark.parametrize("cell", [20, 40, 96])
def test_generated_windows(cell, packing):
    for seed in range(2):
        norm, thr, lo = _stats_and_norm(_window(cell, seed))
        assert _assert_same(norm, thr, lo) > 5
        _assert_same(norm, thr, None)


def test_dim_objects_scene(packing):
    img, _, dim, _ = varied_brightness_scene(480, seed=4)
    norm, thr, lo = _stats_and_norm((np.clip(img, 0, None) * 4000).astype(np.uint16)[None])
    assert lo is not None and lo < thr
    assert _assert_same(norm, thr, lo) > len(dim)


def test_dsb2018_fluorescence():
    """Real images: the first 25 fluorescence images of DSB2018, each its own scene, hysteresis on."""
    root = shared("dsb2018")
    ids = pd.read_csv(root / "manifest.csv").query("modality == 'fluor'")["id"].tolist()[:25]
    n = 0
    for i in ids:
        gray = np.asarray(Image.open(root / "images" / f"{i}.png").convert("RGB"), np.float32).mean(axis=2)[None]
        norm, thr, lo = _stats_and_norm(gray)
        n += _assert_same(norm, thr, lo)
    assert n > 500


def test_random_windows_with_ties(packing):
    """Small windows of plateaus (few grey levels), specks touching diagonally and objects cut by the edges."""
    for seed in range(60):
        rng = np.random.default_rng(seed)
        hgt, wid = (int(v) for v in rng.integers(6, 90, 2))
        if seed % 2:
            img = ndi.gaussian_filter(rng.random((hgt, wid)).astype(np.float32), rng.uniform(1, 4))
            img = np.round((img - img.min()) / (np.ptp(img) + 1e-9) * 6) / 6
        else:
            img = (rng.random((hgt, wid)) < rng.uniform(0.2, 0.6)).astype(np.float32) * rng.uniform(0.6, 1, (hgt, wid)).astype(np.float32)
        _assert_same(img, 0.5, 0.3 if seed % 3 else None, sigma=0.0, h=float(rng.choice([0.25, 0.5, 1.5])),
                     merge_ratio=float(rng.choice([0.5, 0.75])), min_area=1)


def test_all_foreground_and_empty():
    full = np.ones((40, 50), np.float32)
    full[20, 25] = 2.0
    _assert_same(full, 0.5, 0.3, sigma=0.0)
    assert classical_instances(np.zeros((30, 30), np.float32), 0.5, low_threshold=0.3).max() == 0
