"""The change core on shapes made here: shift estimation, one-to-one matching, verdicts, splits and merges,
the common footprint's edge, and :func:`pipeline.diff.find_previous`. No files: pure numpy/shapely."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from pipeline.stages.change import ChangeParams, ObjectSet, compare
from pipeline.stages.coregister import Shift, estimate_shift, shift_from_votes
from pipeline.stages.footprint import common_footprint

NONE = Shift(0.0, 0.0, 0, estimated=False)
WORLD = shapely.box(-1000, -1000, 1000, 1000)


def objects(geoms, ids=None, classes=None) -> ObjectSet:
    g = np.array(geoms, dtype=object)
    n = len(g)
    return ObjectSet(np.arange(1, n + 1) if ids is None else np.asarray(ids), g,
                     np.array(classes if classes is not None else ["object"] * n, dtype=object), shapely.area(g))


def disc(x, y, r):
    return shapely.Point(x, y).buffer(r, quad_segs=8)


def run(old, new, shift=NONE, footprint=None, **kw):
    fp = footprint or common_footprint(WORLD, WORLD, 1.0)
    rows = compare(old, new, shift, fp, ChangeParams(**kw))
    return rows, dict(zip(*np.unique(rows.cols["change"].astype(str), return_counts=True)))


def test_shift_is_recovered_from_objects_with_outliers():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 1000, (3000, 2))
    area = rng.uniform(20, 80, 3000)
    true = np.array([1.3, -0.8])
    new_xy = xy + true + rng.normal(0, 0.15, xy.shape)  # segmentation jitter
    keep = rng.random(3000) > 0.1  # a tenth gone, and as many unrelated new objects
    new_xy = np.vstack([new_xy[keep], rng.uniform(0, 1000, (300, 2))])
    new_area = np.concatenate([area[keep] * rng.uniform(0.9, 1.1, keep.sum()), rng.uniform(20, 80, 300)])
    s = estimate_shift(xy, area, new_xy, new_area, max_shift=5.0, bin_size=0.25)
    assert s.estimated and s.votes > 2000
    assert abs(s.dx - true[0]) < 0.05 and abs(s.dy - true[1]) < 0.05


def test_shift_not_estimated_without_enough_pairs():
    s = shift_from_votes(np.zeros((3, 2)), 5.0, 0.5)
    assert not s.estimated and (s.dx, s.dy) == (0.0, 0.0)


def test_same_new_gone_grown_shrunk():
    old = objects([disc(0, 0, 5), disc(50, 0, 5), disc(100, 0, 5), disc(150, 0, 6)])
    new = objects([disc(0.5, 0, 5), disc(100, 0, 7), disc(150, 0, 4.5), disc(200, 0, 5)])
    rows, c = run(old, new)
    assert c == {"same": 1, "gone": 1, "grown": 1, "shrunk": 1, "new": 1}
    by_change = {ch: i for i, ch in enumerate(rows.cols["change"])}
    assert rows.cols["old_id"][by_change["gone"]] == 2 and rows.cols["new_id"][by_change["gone"]] is None
    assert rows.cols["new_id"][by_change["new"]] == 4
    g = by_change["grown"]
    assert rows.cols["area_ratio"][g] == pytest.approx(49 / 25, rel=0.02)
    # every object of either date in exactly one row
    assert sorted(x for x in rows.cols["old_id"] if x is not None) == [1, 2, 3, 4]
    assert sorted(x for x in rows.cols["new_id"] if x is not None) == [1, 2, 3, 4]


def test_area_change_threshold_decides_not_iou():
    old = objects([disc(0, 0, 10)])
    # flicker: the same size, displaced by 40 % of the radius -> IoU well below 0.5, still the same object
    rows, c = run(old, objects([disc(4, 0, 10)]))
    assert c == {"same": 1} and rows.cols["iou"][0] < 0.6
    # 1.25x the area: within the default tolerance 1.3; beyond a stricter one
    assert run(old, objects([disc(0, 0, 10 * 1.25 ** 0.5)]))[1] == {"same": 1}
    assert run(old, objects([disc(0, 0, 10 * 1.25 ** 0.5)]), area_change=1.2)[1] == {"grown": 1}


def test_min_iou_separates_unrelated_neighbours():
    old = objects([disc(0, 0, 10)])
    new = objects([disc(18, 0, 10)])  # barely touching: IoU ~0.02
    assert run(old, new)[1] == {"gone": 1, "new": 1}
    assert run(old, new, min_iou=0.01)[1] == {"same": 1}


def test_shift_is_removed_before_matching():
    old = objects([disc(x, 0, 3) for x in range(0, 200, 20)])
    new = objects([disc(x + 5, 1, 3) for x in range(0, 200, 20)])  # shifted by most of a diameter: IoU < 0.1
    assert run(old, new)[1] == {"gone": 10, "new": 10}
    rows, c = run(old, new, shift=Shift(5.0, 1.0, 10))
    assert c == {"same": 10}
    assert np.allclose(np.array(rows.cols["displacement"], float), 0, atol=1e-6)


def test_split_and_merge_are_one_group_with_one_verdict():
    whole = shapely.box(0, 0, 20, 10)
    halves = [shapely.box(0, 0, 9.5, 10), shapely.box(10.5, 0, 20, 10)]
    rows, c = run(objects([whole]), objects(halves))
    assert c == {"same": 2} and set(rows.cols["relation"]) == {"split"}
    assert len(set(rows.cols["group_id"])) == 1
    assert rows.cols["area_ratio"][0] == pytest.approx(0.95)
    rows, c = run(objects(halves), objects([whole]))
    assert c == {"same": 2} and set(rows.cols["relation"]) == {"merge"}
    # a split where the parts together grew is grown, for every member
    rows, c = run(objects([whole]), objects([shapely.box(0, 0, 10, 14), shapely.box(10, 0, 20, 14)]))
    assert c == {"grown": 2}


def test_neighbour_built_next_to_an_object_is_new_not_a_split():
    old = objects([shapely.box(0, 0, 10, 10)])
    new = objects([shapely.box(0, 0, 10, 10), shapely.box(9, 0, 19, 10)])  # overlaps by a tenth only
    rows, c = run(old, new)
    assert c == {"same": 1, "new": 1}


def test_class_changed_only_when_classes_are_compared():
    old = objects([disc(0, 0, 5)], classes=["building"])
    new = objects([disc(0, 0, 5)], classes=["construction"])
    assert run(old, new)[1] == {"same": 1}
    assert run(old, new, compare_classes=True)[1] == {"class-changed": 1}
    # a size change wins over a class change
    assert run(old, objects([disc(0, 0, 8)], classes=["construction"]), compare_classes=True)[1] == {"grown": 1}


def test_objects_cut_by_the_footprint_edge_are_not_new_or_gone():
    # old run covers x < 100, new run x < 60: the common footprint ends at x = 60
    fp = common_footprint(shapely.box(0, 0, 100, 100), shapely.box(0, 0, 60, 100), 1.0)
    cut_old = shapely.box(55, 10, 70, 20)        # whole in the old run, cut at 60 in the new run
    cut_new = shapely.box(55, 10, 60, 20)
    sliver = shapely.box(58, 40, 64, 50)          # old only, mostly beyond the edge
    gone = shapely.box(20, 40, 30, 50)             # inside: really gone
    beyond = shapely.box(70, 70, 80, 80)          # outside the common footprint: left out
    old = objects([cut_old, sliver, gone, beyond])
    new = objects([cut_new])
    rows, c = run(old, new, footprint=fp)
    assert c == {"same": 1, "edge": 1, "gone": 1}
    same = list(rows.cols["change"]).index("same")
    assert rows.cols["area_ratio"][same] == pytest.approx(1.0)  # compared on the parts inside the footprint
    assert 4 not in list(rows.cols["old_id"])


def test_footprints_that_do_not_meet():
    fp = common_footprint(shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10), 1.0)
    assert fp.area.is_empty


def test_component_extent_covers_every_member():
    old = objects([shapely.box(0, 0, 10, 10), shapely.box(50, 50, 60, 60)])
    new = objects([shapely.box(5, 0, 15, 12)])
    rows, _ = run(old, new)
    first = [k for k, o in enumerate(rows.cols["old_id"]) if o == 1][0]
    assert list(rows.extent[first]) == [0, 0, 15, 12]


def test_find_previous_prefers_the_same_stem_then_the_largest_overlap():
    from pipeline.diff import find_previous

    crs = {"type": "ProjectedCRS", "name": "x"}  # compared as given; only equality matters here

    def run_summary(inp, x0, ver="1", when="2026-01-01"):
        return {"input": inp, "input_version": ver, "transform": [1, 0, x0, 0, -1, 100], "width": 100, "height": 100,
                "crs": crs, "finished_at": when}

    new = run_summary("/in/a.tif", 0, ver="2", when="2026-03-01")
    older_a = run_summary("/in/a.tif", 0, ver="1", when="2026-01-01")
    later_a = run_summary("/in/a.tif", 0, ver="1b", when="2026-02-01")
    b_small = run_summary("/in/b.tif", 80)
    b_big = run_summary("/in/c.tif", 30)
    far = run_summary("/in/d.tif", 500)
    assert find_previous(new, [older_a, b_big, later_a]) is later_a
    assert find_previous(new, [b_small, b_big, far]) is b_big
    assert find_previous(new, [far, new]) is None


def test_min_area_is_judged_on_the_larger_side():
    old = objects([disc(0, 0, 1), disc(50, 0, 2), disc(100, 0, 5)])
    new = objects([disc(0, 0, 1.05), disc(50, 0, 3), disc(200, 0, 1)])
    rows, c = run(old, new, min_area=20.0)  # discs of radius 1, 2, 3, 5: 3.1, 12.6, 28.3, 78.5
    small = dict(zip(rows.cols["change"], rows.cols["small"]))
    assert c == {"same": 1, "grown": 1, "gone": 1, "new": 1}
    assert small == {"same": True, "grown": False, "gone": False, "new": True}


def test_a_boundary_moving_between_touching_objects_is_not_a_change():
    """Two touching objects, the line between them moved by a quarter: one 'gains' what the other 'loses'."""
    old = objects([shapely.box(0, 0, 10, 10), shapely.box(10, 0, 20, 10)])
    new = objects([shapely.box(0, 0, 13.5, 10), shapely.box(13.5, 0, 20, 10)])
    rows, c = run(old, new)
    assert c == {"same": 2} and set(rows.cols["relation"]) == {"boundary"}
    assert [round(r, 3) for r in rows.cols["area_ratio"]] == [1.0, 1.0]
    # a real extension into empty ground next to a neighbour stays grown, the neighbour same
    new = objects([shapely.box(0, -8, 10, 10), shapely.box(10, 0, 20, 10)])
    assert run(old, new)[1] == {"grown": 1, "same": 1}
