"""Tile grid arithmetic: cores cover the raster exactly once, windows stay in bounds, crop-then-paste is identity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ParameterError
from pipeline.stages.grid import TileGrid, Window, validate_tiling
from pipeline.stages.stitch import components, match_band

grids = st.builds(
    lambda h, w, t, f: TileGrid(h, w, t, int(f * (t - 1))),
    st.integers(1, 300), st.integers(1, 300), st.integers(1, 120), st.floats(0, 0.99),
)


@settings(max_examples=60, deadline=None)
@given(grids)
@pytest.mark.slow  # many grids
def test_cores_cover_exactly_once_and_windows_in_bounds(g):
    cover = np.zeros((g.height, g.width), np.int32)
    for t in g:
        cover[t.core.slices] += 1
        assert g.bounds.intersection(t.window) == t.window
        assert t.window.intersection(t.core) == t.core
        # Halo is the requested width wherever the raster allows.
        assert t.core.row - t.window.row == min(g.halo, t.core.row)
    assert (cover == 1).all()
    assert len(list(g)) == len(g)


@settings(max_examples=40, deadline=None)
@given(grids, st.integers(0, 2**31 - 1))
def test_crop_then_paste_is_identity(g, seed):
    img = np.random.default_rng(seed).integers(0, 100, (g.height, g.width))
    out = np.full_like(img, -1)
    for t in g:
        win = img[t.window.slices]
        out[t.core.slices] = win[t.core.relative_to(t.window)]
    assert (out == img).all()


def test_forward_neighbours_pairs_each_once():
    g = TileGrid(50, 70, 16, 4)
    pairs = {(t.index, n.index) for t in g for n in g.forward_neighbours(t)}
    undirected = {tuple(sorted(p)) for p in pairs}
    assert len(pairs) == len(undirected)
    rows, cols = g.shape
    expected = rows * (cols - 1) + (rows - 1) * cols + 2 * (rows - 1) * (cols - 1)
    assert len(pairs) == expected


def test_seam_band_has_context_on_both_sides():
    g = TileGrid(100, 100, 40, 10)
    a, b = g.tile_at(0, 0), g.tile_at(0, 1)
    band = g.seam_band(a, b)
    assert (band.col, band.col_end) == (35, 45)
    assert (band.row, band.row_end) == (0, 45)


def test_window_rejects_negative_size():
    with pytest.raises(ValueError, match="non-negative"):
        Window(0, 0, -1, 3)


@pytest.mark.parametrize("tile,halo,msg", [(0, 0, "--tile must be a positive"), (-3, 0, "--tile"),
                                           (64, 64, r"--halo \(64\) must be smaller than --tile"),
                                           (64, -1, "--halo must be zero or")])
def test_validate_tiling_messages(tile, halo, msg):
    with pytest.raises(ParameterError, match=msg):
        validate_tiling(tile, halo)


def test_match_band_joins_same_object_not_touching_neighbours():
    # Two objects touching along a vertical line; both tiles agree except one pixel of disagreement.
    la = np.zeros((6, 6), np.uint32)
    la[:, :3], la[:, 3:] = 1, 2
    lb = np.zeros((6, 6), np.uint32)
    lb[:, :3], lb[:, 3:] = 7, 9
    lb[0, 3] = 7
    pairs = match_band(la, lb, np.array([1, 2]), np.array([7, 9]))
    assert sorted(map(tuple, pairs.tolist())) == [(1, 7), (2, 9)]
    # Labels without pixels in their own core are never joined.
    assert match_band(la, lb, np.array([1]), np.array([7, 9])).tolist() == [[1, 7]]


def test_components_representative_is_smallest_key():
    edges = np.array([[10, 20], [20, 30], [40, 5]], np.int64)
    rep = components(edges)
    assert rep == {10: 10, 20: 10, 30: 10, 5: 5, 40: 5}
    assert components(np.zeros((0, 2), np.int64)) == {}


@given(st.integers(0, 200), st.integers(1, 8), st.integers(1, 16))
def test_task_batches_cover_every_tile_once_and_keep_workers_busy(n, per_task, slots):
    from pipeline.runner import task_batches

    batches = task_batches(n, per_task, slots)
    assert [i for b in batches for i in b] == list(range(n))
    assert all(1 <= len(b) <= per_task for b in batches)
    # a scene with a tile for every worker thread gives every thread work, whatever tiles_per_task says
    if n >= slots:
        assert len(batches) >= slots
