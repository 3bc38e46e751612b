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
5. **Touching neighbours.** Where two objects touch, segmenters move the boundary between them from one
   acquisition to the next. Area of a new outline lying on another group's old outline is credited back to
   that group before sizes are compared (pairs so adjusted have ``relation`` ``boundary``): one object's gain
   is its neighbour's loss, not a change of either.
6. **Verdict.** For a pair or group: ``grown`` when new/old area ≥ ``area_change`` (default 1.3),
   ``shrunk`` when ≤ 1/``area_change``, else ``same`` — or ``class-changed`` when the two runs name classes
   in common and the (matched) pair's classes differ. IoU does not decide: flicker lowers IoU without
   changing size. Unmatched, ungrouped objects are ``new`` or ``gone`` (or ``edge``, rule 2).
7. **Minimum mapping unit** (``min_area``, in the runs' area unit; default 0: off). Lone objects, and pairs or
   groups whose larger side is smaller than it, are flagged ``small`` and left out by the driver — judged on
   the larger side, so an object that grew past the unit is still ``grown``, not ``new``.

Every object of either date inside the footprint is in exactly one row (a matched pair shares one row).
The ``area_ratio`` of a row is the one its verdict used (its group's, after rules 2 and 5); ``area_old`` and
``area_new`` are the runs' own ``area`` values of the row's objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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
    min_area: float = 0.0  # in the runs' own area unit: changes of smaller objects are not reported


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
    """One-to-one matching: IoU > 0.5 pairs are unique (taken at once); the rest greedily by IoU.
    Returns the partner of each old and new object (-1: none) and the candidate-pair index of each old one."""
    mo = np.full(n_old, -1, np.int64)
    mn = np.full(n_new, -1, np.int64)
    mk = np.full(n_old, -1, np.int64)
    sure = np.nonzero(iou > 0.5)[0]
    mo[i[sure]], mn[j[sure]], mk[i[sure]] = j[sure], i[sure], sure
    rest = np.nonzero((iou <= 0.5) & (iou >= min_iou))[0]
    rest = rest[np.lexsort((j[rest], i[rest], -iou[rest]))]
    for k in rest.tolist():
        a, b = i[k], j[k]
        if mo[a] < 0 and mn[b] < 0:
            mo[a], mn[b], mk[a] = b, a, k
    return mo, mn, mk


def _first_per(keys: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Positions (into ``order``) of the first occurrence of each key along ``order``."""
    _, first = np.unique(keys[order], return_index=True)
    return order[first]


def compare(old: ObjectSet, new: ObjectSet, shift: Shift, footprint: Footprint, params: ChangeParams) -> ChangeRows:
    """The change rows of two object sets (see the module docstring for the rules)."""
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
    mo, mn, mk = _greedy(i, j, iou, no, nn, params.min_iou)

    # groups, named by the old index of their matched pair: the pair, and each unmatched object lying mostly
    # inside a matched object of the other date (joining the one it overlaps most)
    g_old = np.where(mo >= 0, np.arange(no), -1)
    g_new = np.where(mn >= 0, mn, -1)
    ext_n = np.nonzero((mn[j] < 0) & (mo[i] >= 0) & (inter >= params.containment * an[j]))[0]
    if len(ext_n):
        k = _first_per(j, ext_n[np.argsort(-inter[ext_n], kind="stable")])
        g_new[j[k]] = i[k]
    ext_o = np.nonzero((mo[i] < 0) & (mn[j] >= 0) & (inter >= params.containment * ao[i]))[0]
    if len(ext_o):
        k = _first_per(i, ext_o[np.argsort(-inter[ext_o], kind="stable")])
        g_old[i[k]] = mn[j[k]]
    # area that crossed the boundary between two touching objects — a new outline covering part of another
    # group's old outline — is credited back to that group before sizes are compared
    cross = (g_old[i] >= 0) & (g_new[j] >= 0) & (g_old[i] != g_new[j])
    moved = np.zeros(no)
    np.subtract.at(moved, g_new[j[cross]], inter[cross])
    np.add.at(moved, g_old[i[cross]], inter[cross])

    # components of the overlap graph (for a partitioned driver: a component is decided as a whole)
    g = coo_matrix((np.ones(len(i)), (i, no + j)), shape=(no + nn, no + nn))
    _, comp = connected_components(g, directed=False)
    bb = np.concatenate([shapely.bounds(old.geoms), shapely.bounds(new_t)]) if no + nn else np.zeros((0, 4))
    cext = np.empty((comp.max(initial=-1) + 1, 4))
    cext[:, :2], cext[:, 2:] = np.inf, -np.inf
    for k, fn in ((0, np.minimum), (1, np.minimum), (2, np.maximum), (3, np.maximum)):
        fn.at(cext[:, k], comp, bb[:, k])

    shapely.prepare(footprint.zone)
    near = shapely.intersects(footprint.zone, np.concatenate([old.geoms, new_t])) if no + nn else np.zeros(0, bool)
    return _rows(_Ctx(old, new, new_t, ao, an, mo, mk, g_old, g_new, moved, near, cext[comp], iou, footprint, params))


@dataclass
class _Ctx:
    old: ObjectSet
    new: ObjectSet
    new_t: np.ndarray
    ao: np.ndarray
    an: np.ndarray
    mo: np.ndarray
    mk: np.ndarray
    g_old: np.ndarray
    g_new: np.ndarray
    moved: np.ndarray
    near: np.ndarray
    ext: np.ndarray
    iou: np.ndarray
    footprint: Footprint
    params: ChangeParams


def _verdict(ratio: np.ndarray, same_class: np.ndarray, p: ChangeParams) -> np.ndarray:
    out = np.full(len(ratio), "same", dtype=object)
    if p.compare_classes:
        out[~same_class] = "class-changed"
    out[ratio >= p.area_change] = "grown"
    out[ratio <= 1.0 / p.area_change] = "shrunk"
    return out


class _Out:
    """Row columns gathered block by block (a block: arrays of equal length; None where a value is absent)."""

    def __init__(self):
        self.blocks: list[dict[str, np.ndarray]] = []

    def add(self, n: int, **cols) -> None:
        if n:
            self.blocks.append({k: (v if isinstance(v, np.ndarray) and len(v) == n else np.full(n, v, dtype=object))
                                for k, v in cols.items()})

    def column(self, k: str) -> np.ndarray:
        if not self.blocks:
            return np.zeros(0, object)
        return np.concatenate([np.asarray(b[k], dtype=object) for b in self.blocks])


def _rows(c: _Ctx) -> ChangeRows:
    old, new, p = c.old, c.new, c.params
    no, nn = len(old), len(new)
    out = _Out()
    cent = shapely.centroid(np.concatenate([old.geoms, c.new_t])) if no + nn else np.zeros(0, object)
    cx, cy = shapely.get_x(cent), shapely.get_y(cent)
    size_o = np.bincount(c.g_old[c.g_old >= 0], minlength=no)
    size_n = np.bincount(c.g_new[c.g_new >= 0], minlength=no)

    # alone: new, gone, or edge (near the footprint's edge and mostly outside its interior)
    for which, alone, n_off in (("gone", np.nonzero(c.g_old < 0)[0], 0), ("new", np.nonzero(c.g_new < 0)[0], no)):
        geoms = old.geoms[alone] if which == "gone" else c.new_t[alone]
        change = np.full(len(alone), which, dtype=object)
        nr = c.near[n_off + alone]
        if nr.any():
            a = shapely.area(geoms[nr])
            inside = shapely.area(shapely.intersection(geoms[nr], c.footprint.inner))
            change[np.nonzero(nr)[0][~(inside >= EDGE_INSIDE * np.maximum(a, 1e-300))]] = "edge"
        src = old if which == "gone" else new
        ids = src.ids[alone].astype(object)
        out.add(len(alone), change=change, relation=None, group_id=None, small=src.area[alone] < p.min_area,
                old_id=ids if which == "gone" else None, new_id=ids if which == "new" else None,
                class_old=src.classes[alone] if which == "gone" else None,
                class_new=src.classes[alone] if which == "new" else None,
                area_old=src.area[alone].astype(object) if which == "gone" else None,
                area_new=src.area[alone].astype(object) if which == "new" else None,
                area_ratio=None, iou=None, dx=None, dy=None, displacement=None,
                geometry=old.geoms[alone] if which == "gone" else new.geoms[alone], owner=n_off + alone)

    # plain pairs (one old, one new, nothing joined), vectorised
    anchors = np.nonzero(c.mo >= 0)[0]
    plain = anchors[(size_o[anchors] == 1) & (size_n[anchors] == 1)]
    b = c.mo[plain]
    near = c.near[plain] | c.near[no + b]
    area_o, area_n = c.ao[plain].copy(), c.an[b].copy()
    if near.any():  # near the footprint's edge: compare the parts inside it
        area_o[near] = shapely.area(shapely.intersection(old.geoms[plain[near]], c.footprint.area))
        area_n[near] = shapely.area(shapely.intersection(c.new_t[b[near]], c.footprint.area))
    ratio = (area_n + c.moved[plain]) / np.maximum(area_o, 1e-300)
    dxs, dys = cx[no + b] - cx[plain], cy[no + b] - cy[plain]
    out.add(len(plain), change=_verdict(ratio, old.classes[plain] == new.classes[b], p),
            relation=np.where(c.moved[plain] != 0, "boundary", "pair").astype(object),
            small=np.maximum(old.area[plain], new.area[b]) < p.min_area,
            group_id=old.ids[plain].astype(object), old_id=old.ids[plain].astype(object), new_id=new.ids[b].astype(object),
            class_old=old.classes[plain], class_new=new.classes[b], area_old=old.area[plain].astype(object),
            area_new=new.area[b].astype(object), area_ratio=ratio.astype(object), iou=c.iou[c.mk[plain]].astype(object),
            dx=dxs.astype(object), dy=dys.astype(object), displacement=np.hypot(dxs, dys).astype(object),
            geometry=new.geoms[b], owner=plain)

    # groups with splits or merges: one verdict from the summed areas, a row per member
    for a in anchors[(size_o[anchors] > 1) | (size_n[anchors] > 1)].tolist():
        olds = np.nonzero(c.g_old == a)[0]
        news = np.nonzero(c.g_new == a)[0]
        bb = int(c.mo[a])
        if c.near[olds].any() or c.near[no + news].any():
            area_o = float(shapely.area(shapely.intersection(old.geoms[olds], c.footprint.area)).sum())
            area_n = float(shapely.area(shapely.intersection(c.new_t[news], c.footprint.area)).sum())
        else:
            area_o, area_n = float(c.ao[olds].sum()), float(c.an[news].sum())
        r = (area_n + float(c.moved[a])) / max(area_o, 1e-300)
        uo, un = shapely.union_all(old.geoms[olds]), shapely.union_all(c.new_t[news])
        it = shapely.area(shapely.intersection(uo, un))
        gi = float(it / max(shapely.area(uo) + shapely.area(un) - it, 1e-300))
        wo, wn = c.ao[olds], c.an[news]
        d = (float((cx[no + news] * wn).sum() / wn.sum() - (cx[olds] * wo).sum() / wo.sum()),
             float((cy[no + news] * wn).sum() / wn.sum() - (cy[olds] * wo).sum() / wo.sum()))
        change = _verdict(np.array([r]), np.array([old.classes[a] == new.classes[bb]]), p)[0]
        relation = "split" if len(olds) == 1 else "merge" if len(news) == 1 else "regroup"
        common = dict(change=change, relation=relation, group_id=int(old.ids[a]), area_ratio=r, iou=gi, dx=d[0], dy=d[1],
                      displacement=float(np.hypot(*d)),
                      small=max(float(old.area[olds].sum()), float(new.area[news].sum())) < p.min_area)
        out.add(1, old_id=int(old.ids[a]), new_id=int(new.ids[bb]), class_old=old.classes[a], class_new=new.classes[bb],
                area_old=float(old.area[a]), area_new=float(new.area[bb]), geometry=np.array([new.geoms[bb]], object),
                owner=np.array([a]), **common)
        xo, xn = olds[olds != a], news[news != bb]
        out.add(len(xo), old_id=old.ids[xo].astype(object), new_id=None, class_old=old.classes[xo], class_new=None,
                area_old=old.area[xo].astype(object), area_new=None, geometry=old.geoms[xo], owner=xo, **common)
        out.add(len(xn), old_id=None, new_id=new.ids[xn].astype(object), class_old=None, class_new=new.classes[xn],
                area_old=None, area_new=new.area[xn].astype(object), geometry=new.geoms[xn], owner=no + xn, **common)
    cols = {k: out.column(k) for k in [*ROW_COLUMNS, "small"]}
    owner = out.column("owner").astype(np.int64) if out.blocks else np.zeros(0, np.int64)
    return ChangeRows(cols, out.column("geometry"), c.ext[owner].reshape(-1, 4))
