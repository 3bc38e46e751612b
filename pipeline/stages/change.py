"""Object-level change between two dates: one-to-one matching by overlap, then a verdict per object.

Everything here is plain numpy/shapely on objects already in one coordinate frame (the driver,
:mod:`pipeline.diff`, reads, reprojects and partitions them). The rules, in order:

1. **Shift removed.** Date-2 objects are moved back by the estimated global shift (:mod:`pipeline.stages.coregister`)
   before any overlap is measured; output geometries stay where each run put them.
2. **Common footprint.** Objects that do not meet the footprint both runs cover are left out. Near its edge
   objects may be cut (:mod:`pipeline.stages.footprint`): matched ones are compared on their parts inside
   the footprint, and an unmatched one that lies mostly outside the footprint's interior is ``edge`` (not
   compared), never new or gone.
3. **One-to-one matching.** Candidate pairs are old/new objects that overlap; a pair's score is its IoU.
   Pairs are taken greedily by decreasing IoU while both objects are free and IoU ≥ ``min_iou``. Above IoU
   0.5 this is the unique matching (objects of one date do not overlap); below it greedy settles the rare
   conflicts. A low ``min_iou`` (default 0.1) lets an object that grew a lot, or flickered, still match.
4. **Splits and merges.** An unmatched object lying mostly (≥ ``containment``, default 0.5 of its area)
   inside a matched object of the other date joins that pair's *group*: one old ↔ several new is a
   ``split``, several old ↔ one new a ``merge`` (``regroup`` when both). Segmenters split or merge touching
   objects differently from one acquisition to the next; that is flicker, not change, so the whole group
   gets one verdict from its summed areas, and every member gets a row with that verdict.
5. **Verdict.** For a pair or group: ``grown`` when new/old area ≥ ``area_change`` (default 1.3),
   ``shrunk`` when ≤ 1/``area_change``, else ``same`` — or ``class-changed`` when the two runs name classes
   in common and the (matched) pair's classes differ. IoU does not decide: flicker lowers IoU without
   changing size. Unmatched, ungrouped objects are ``new`` or ``gone`` (or ``edge``, rule 2).

Every object of either date inside the footprint is in exactly one row (a matched pair shares one row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.stages.coregister import Shift
from pipeline.stages.footprint import EDGE_INSIDE, Footprint

__all__ = ["ChangeParams", "ObjectSet", "ChangeRows", "compare", "CHANGES", "ROW_COLUMNS"]

CHANGES = ["new", "gone", "grown", "shrunk", "same", "class-changed", "edge"]
ROW_COLUMNS = ["change", "relation", "group_id", "old_id", "new_id", "class_old", "class_new", "area_old",
               "area_new", "area_ratio", "iou", "dx", "dy", "displacement"]


@dataclass(frozen=True)
class ChangeParams:
    area_change: float = 1.3
    min_iou: float = 0.1
    containment: float = 0.5
    compare_classes: bool = False


@dataclass
class ObjectSet:
    """One date's objects in the working frame: ids, geometries, classes and the run's own ``area`` column."""

    ids: np.ndarray
    geoms: np.ndarray
    classes: np.ndarray
    area: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: np.ndarray) -> "ObjectSet":
        return ObjectSet(self.ids[idx], self.geoms[idx], self.classes[idx], self.area[idx])


@dataclass
class ChangeRows:
    """Output rows (columns of :data:`ROW_COLUMNS` plus ``geometry``) and, per row, the bbox of its component
    of the overlap graph (date-1 frame: the members' bboxes joined, date-2 members moved back by the shift) —
    what a partitioned driver needs to know which partition owns a row and whether it saw all of it."""

    cols: dict[str, np.ndarray]
    geometry: np.ndarray
    extent: np.ndarray  # (n, 4) xmin, ymin, xmax, ymax of the row's component

    def __len__(self) -> int:
        return len(self.geometry)

    def take(self, idx: np.ndarray) -> "ChangeRows":
        return ChangeRows({k: v[idx] for k, v in self.cols.items()}, self.geometry[idx], self.extent[idx])


def _greedy(i: np.ndarray, j: np.ndarray, iou: np.ndarray, n_old: int, n_new: int, min_iou: float):
    """One-to-one matching: IoU > 0.5 pairs are unique (taken at once); the rest greedily by IoU."""
    mo = np.full(n_old, -1, np.int64)
    mn = np.full(n_new, -1, np.int64)
    sure = iou > 0.5
    mo[i[sure]], mn[j[sure]] = j[sure], i[sure]
    rest = np.nonzero(~sure & (iou >= min_iou))[0]
    rest = rest[np.lexsort((j[rest], i[rest], -iou[rest]))]
    for k in rest.tolist():
        a, b = i[k], j[k]
        if mo[a] < 0 and mn[b] < 0:
            mo[a], mn[b] = b, a
    return mo, mn


def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def compare(old: ObjectSet, new: ObjectSet, shift: Shift, footprint: Footprint, params: ChangeParams) -> ChangeRows:
    """The change rows of two object sets (see the module docstring for the rules)."""
    import shapely
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    shapely.prepare(footprint.area)
    in_o = shapely.intersects(footprint.area, old.geoms)
    new_t = shapely.transform(new.geoms, lambda xy: xy - np.array([shift.dx, shift.dy])) if len(new) else new.geoms
    in_n = shapely.intersects(footprint.area, new_t)
    old, new, new_t = old.take(np.nonzero(in_o)[0]), new.take(np.nonzero(in_n)[0]), new_t[in_n]
    no, nn = len(old), len(new)
    ao, an = shapely.area(old.geoms), shapely.area(new_t)

    tree = shapely.STRtree(new_t)
    i, j = tree.query(old.geoms, predicate="intersects") if no and nn else (np.zeros(0, np.int64),) * 2
    inter = shapely.area(shapely.intersection(old.geoms[i], new_t[j])) if len(i) else np.zeros(0)
    keep = inter > 0
    i, j, inter = i[keep], j[keep], inter[keep]
    iou = inter / np.maximum(ao[i] + an[j] - inter, 1e-300)
    mo, mn = _greedy(i, j, iou, no, nn, params.min_iou)

    # groups: union-find over old (0..no-1) and new (no..) objects; matched pairs first, then extras
    parent = np.arange(no + nn)
    for a in np.nonzero(mo >= 0)[0].tolist():
        parent[no + mo[a]] = a
    order = np.argsort(-inter, kind="stable")
    joined_n, joined_o = np.zeros(nn, bool), np.zeros(no, bool)
    for k in order.tolist():  # largest overlap first: each extra joins the partner it overlaps most
        a, b = i[k], j[k]
        if mn[b] < 0 and mo[a] >= 0 and not joined_n[b] and inter[k] >= params.containment * an[b]:
            parent[no + b] = _find(parent, a)
            joined_n[b] = True
        elif mo[a] < 0 and mn[b] >= 0 and not joined_o[a] and inter[k] >= params.containment * ao[a]:
            parent[a] = _find(parent, no + b)
            joined_o[a] = True
    root = np.array([_find(parent, x) for x in range(no + nn)], np.int64)

    # components of the overlap graph (for a partitioned driver: a component is decided as a whole)
    g = coo_matrix((np.ones(len(i)), (i, no + j)), shape=(no + nn, no + nn))
    _, comp = connected_components(g, directed=False)
    bb = np.concatenate([shapely.bounds(old.geoms), shapely.bounds(new_t)]) if no + nn else np.zeros((0, 4))
    cext = np.empty((comp.max(initial=-1) + 1, 4))
    cext[:, :2], cext[:, 2:] = np.inf, -np.inf
    for k, fn in ((0, np.minimum), (1, np.minimum), (2, np.maximum), (3, np.maximum)):
        fn.at(cext[:, k], comp, bb[:, k])

    shapely.prepare(footprint.zone)
    both = np.concatenate([old.geoms, new_t])
    near = shapely.intersects(footprint.zone, both) if no + nn else np.zeros(0, bool)
    return _rows(old, new, new_t, ao, an, mo, root, near, cext[comp], i, j, iou, footprint, params)


def _mostly_inside(geom, footprint: Footprint) -> bool:
    import shapely

    a = shapely.area(geom)
    return bool(a > 0 and shapely.area(shapely.intersection(geom, footprint.inner)) >= EDGE_INSIDE * a)


def _rows(old, new, new_t, ao, an, mo, root, near, ext, i, j, iou, footprint, params) -> ChangeRows:
    import shapely

    no, nn = len(old), len(new)
    pair_iou = {(int(a), int(b)): float(v) for a, b, v in zip(i.tolist(), j.tolist(), iou.tolist())}
    members: dict[int, list[int]] = {}
    for x, r in enumerate(root.tolist()):
        members.setdefault(r, []).append(x)
    cent = shapely.centroid(np.concatenate([old.geoms, new_t])) if no + nn else np.zeros(0, object)
    cx, cy = shapely.get_x(cent), shapely.get_y(cent)
    out: dict[str, list] = {c: [] for c in ROW_COLUMNS}
    geoms, owner = [], []

    def add(change, relation, gid, o, n, ratio, iou_v, d, geom, c):
        out["change"].append(change)
        out["relation"].append(relation)
        out["group_id"].append(gid)
        out["old_id"].append(int(old.ids[o]) if o is not None else None)
        out["new_id"].append(int(new.ids[n]) if n is not None else None)
        out["class_old"].append(old.classes[o] if o is not None else None)
        out["class_new"].append(new.classes[n] if n is not None else None)
        out["area_old"].append(float(old.area[o]) if o is not None else None)
        out["area_new"].append(float(new.area[n]) if n is not None else None)
        out["area_ratio"].append(ratio)
        out["iou"].append(iou_v)
        out["dx"].append(d[0])
        out["dy"].append(d[1])
        out["displacement"].append(None if d[0] is None else float(np.hypot(d[0], d[1])))
        geoms.append(geom)
        owner.append(c)

    for r, xs in members.items():
        olds = [x for x in xs if x < no]
        news = [x - no for x in xs if x >= no]
        if not olds or not news:  # alone: new, gone or edge
            x = xs[0]
            g = old.geoms[x] if x < no else new_t[x - no]
            change = "edge" if near[x] and not _mostly_inside(g, footprint) else ("gone" if x < no else "new")
            if x < no:
                add(change, "", None, x, None, None, None, (None, None), old.geoms[x], x)
            else:
                add(change, "", None, None, x - no, None, None, (None, None), new.geoms[x - no], x)
            continue
        a = next(o for o in olds if mo[o] >= 0)  # the matched pair anchoring the group
        b = int(mo[a])
        if near[xs].any():  # near the footprint's edge: compare the parts inside it
            area_o = float(shapely.area(shapely.intersection(old.geoms[olds], footprint.area)).sum())
            area_n = float(shapely.area(shapely.intersection(new_t[news], footprint.area)).sum())
        else:
            area_o, area_n = float(ao[olds].sum()), float(an[news].sum())
        ratio = area_n / max(area_o, 1e-300)
        if len(xs) == 2:
            gi = pair_iou[(a, b)]
        else:
            uo, un = shapely.union_all(old.geoms[olds]), shapely.union_all(new_t[news])
            inter = shapely.area(shapely.intersection(uo, un))
            gi = float(inter / max(shapely.area(uo) + shapely.area(un) - inter, 1e-300))
        wo, wn = ao[olds], an[news]
        d = (float((cx[[no + n for n in news]] * wn).sum() / wn.sum() - (cx[olds] * wo).sum() / wo.sum()),
             float((cy[[no + n for n in news]] * wn).sum() / wn.sum() - (cy[olds] * wo).sum() / wo.sum()))
        if ratio >= params.area_change:
            change = "grown"
        elif ratio <= 1.0 / params.area_change:
            change = "shrunk"
        elif params.compare_classes and old.classes[a] != new.classes[b]:
            change = "class-changed"
        else:
            change = "same"
        relation = "pair" if len(xs) == 2 else ("split" if len(olds) == 1 else "merge" if len(news) == 1 else "regroup")
        gid = int(old.ids[a])
        add(change, relation, gid, a, b, ratio, gi, d, new.geoms[b], a)
        for o in olds:
            if o != a:
                add(change, relation, gid, o, None, ratio, gi, d, old.geoms[o], o)
        for n in news:
            if n != b:
                add(change, relation, gid, None, n, ratio, gi, d, new.geoms[n], no + n)
    cols = {k: np.array(v, dtype=object) for k, v in out.items()}
    return ChangeRows(cols, np.array(geoms, dtype=object), ext[np.array(owner, np.int64)].reshape(-1, 4))
