"""``seamline evaluate``: score a prediction against ground truth, overall and near tile seams.

Both sides become label images on one pixel grid (0 = background, one id per object): label images are
read as they are, vector polygons are rasterized with one id per row onto the grid of the raster side (or,
when both are vectors, the grid of ``--like`` or of the run summary beside a Seamline output). Matching is
one-to-one on IoU (:mod:`pipeline.evaluation.metrics`), done once over the whole image; the counts are then split
between objects near a tile seam and the rest, because a tiled run can only go wrong at its seams: a seam
score far below the interior one points at the stitch, not at the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import InputError, ParameterError
from pipeline.evaluation.loading import grid_of, kind, load_labels, rasterize, read_raster, read_vector, run_summary, summary_grid
from pipeline.evaluation.metrics import THRESHOLDS, match_labels
from pipeline.io.scene import PIXEL_TRANSFORM

__all__ = ["evaluate_pair", "evaluate_files", "format_table", "load_labels"]


def _seam_masks(shape, tile: int, band: int, origin=(0, 0), scene_shape=None) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns whose pixel centres lie less than ``band`` px from a seam line.

    Seam lines run along pixel edges at multiples of ``tile`` in the run's grid, whose pixel (0, 0) is at
    ``-origin`` here (non-zero when the evaluated image is a crop of the scene). The scene's own border is
    no seam. Each line gets ``band`` pixels on each side: the pixels a tiled run decides near a tile edge.
    """
    scene_shape = scene_shape or (origin[0] + shape[0], origin[1] + shape[1])
    masks = []
    for n, o, extent in zip(shape, origin, scene_shape):
        m = np.zeros(n, bool)
        for line in range(tile, extent, tile):
            if -band < line - o < n + band:
                m[max(0, line - o - band) : max(0, line - o + band)] = True
        masks.append(m)
    return masks[0], masks[1]


def _seam_objects(labels: np.ndarray, ids: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bool per object id in ``ids`` (sorted): has a pixel in the seam band."""
    hit = np.union1d(np.unique(labels[rows, :]), np.unique(labels[:, cols]))
    return np.isin(ids, hit)


def _group_dict(stats: dict) -> dict:
    per = [s.as_dict() for s in stats["per_threshold"]]
    at50 = next(d for d in per if abs(d["threshold"] - 0.5) < 1e-9)
    aps = [d["ap"] for d in per]
    return {"n_gt": stats["n_gt"], "n_pred": stats["n_pred"], "splits": stats["splits"], "merges": stats["merges"],
            "thresholds": [d["threshold"] for d in per], "ap": aps, "ap_mean": float(np.mean(aps)),
            "at_0.5": at50, "per_threshold": per}


def _check_params(tile, seam_band) -> None:
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile <= 0):
        raise ParameterError(f"evaluate: --tile must be a positive number of pixels, got {tile!r}; pass the tile size of the run")
    if isinstance(seam_band, bool) or not isinstance(seam_band, (int, np.integer)) or seam_band < 0:
        raise ParameterError(f"evaluate: --seam-band must be zero or a positive number of pixels, got {seam_band!r}; e.g. --seam-band 8")


def evaluate_pair(pred_labels: np.ndarray, gt_labels: np.ndarray, tile: int | None = None, seam_band: int = 8, *,
                  origin=(0, 0), scene_shape=None) -> dict:
    """Metrics of one prediction against ground truth, overall and split into seam and interior objects.

    Objects are matched once over the whole image, so an object is judged the same way whichever group it
    is reported in; a group then counts TP and FN by the ground-truth object's group and FP by the
    prediction's. An object is "seam" if a pixel lies within ``seam_band`` px of a tile seam.

    Parameters
    ----------
    pred_labels, gt_labels : ndarray, 2-D, same shape
        Label images, 0 = background.
    tile : int, optional
        Tile size of the run; without it only ``all`` is reported (with a ``note``).
    seam_band : int
        Half-width of the seam band in pixels.
    origin : (int, int)
        ``(row, col)`` of pixel (0, 0) in the run's grid, for a crop of the scene.
    scene_shape : (int, int), optional
        The run's raster size (its far border is no seam); default: the crop reaches the scene's edge.

    Returns
    -------
    dict
        JSON-serialisable: ``shape, tile, seam_band, all`` and, with ``tile``, ``seam`` and ``interior``;
        each group holds ``n_gt, n_pred, splits, merges, thresholds, ap, ap_mean, at_0.5, per_threshold``
        (the last two from :meth:`MatchStats.as_dict`).
    """
    pred, gt = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred.ndim != 2 or gt.ndim != 2:
        raise InputError(f"evaluate: expected 2-D label images, found prediction {pred.shape} and ground truth "
                         f"{gt.shape}; pass single-band label images")
    if pred.shape != gt.shape:
        raise InputError(f"evaluate: prediction grid {pred.shape} differs from ground truth grid {gt.shape}; "
                         "rasterize both on the same grid (pass --like RASTER or matching label images)")
    _check_params(tile, seam_band)
    m = match_labels(gt, pred, THRESHOLDS)
    out = {"shape": [int(s) for s in gt.shape], "tile": None if tile is None else int(tile),
           "seam_band": int(seam_band), "all": _group_dict(m.stats())}
    if tile is None:
        out["note"] = "no tile size (--tile or run summary): seam/interior split omitted"
        return out
    rows, cols = _seam_masks(gt.shape, int(tile), int(seam_band), origin, scene_shape)
    g_seam = _seam_objects(gt, m.gt_ids, rows, cols)
    p_seam = _seam_objects(pred, m.pred_ids, rows, cols)
    out["seam"] = _group_dict(m.stats(g_seam, p_seam))
    out["interior"] = _group_dict(m.stats(~g_seam, ~p_seam))
    return out


def _summary_tile(path: Path, summary: dict) -> int:
    tiling = summary.get("tiling")
    tile = tiling.get("tile") if isinstance(tiling, dict) else None
    if isinstance(tile, bool) or not isinstance(tile, int) or tile <= 0:
        raise InputError(f"evaluate: run summary {path.with_suffix('.json')}: expected tiling.tile, a positive integer, "
                         f"found {tile!r}; pass --tile N")
    return tile


def _origin_in_run(grid_shape, grid_tf, run_grid):
    """``(origin, scene_shape)``: where the evaluated grid's pixel (0, 0) lies in the run's pixel grid, so
    that the seams of a run over a whole scene land in the right place on a ground-truth crop of it; None
    when the grids do not share pixel size and alignment (then seam positions are unknown)."""
    if run_grid is None:
        return (0, 0), None
    run_shape, run_tf, _ = run_grid
    scale, run_scale = [grid_tf.a, grid_tf.b, grid_tf.d, grid_tf.e], [run_tf.a, run_tf.b, run_tf.d, run_tf.e]
    if not np.allclose(scale, run_scale, rtol=1e-6, atol=1e-12):
        return None
    col, row = ~run_tf * (grid_tf.c, grid_tf.f)
    if max(abs(col - round(col)), abs(row - round(row))) > 1e-6:
        return None
    return (int(round(row)), int(round(col))), tuple(run_shape)


def evaluate_files(pred_path, gt_path, tile: int | None = None, seam_band: int = 8, like=None) -> dict:
    """Load both sides onto one grid and :func:`evaluate_pair` them.

    The grid is the raster side's (the ground truth's if both are rasters); with two vector files it is
    ``like``, else the run summary beside the prediction. Without ``tile`` the run summary's
    ``tiling.tile`` is used, so a Seamline output is split into seam/interior without the user having to
    remember the tile size; a ground-truth crop of the scene gets the run's seams at their true place.

    Parameters
    ----------
    pred_path, gt_path : str or Path
        See :func:`load_labels` for the accepted files.
    tile, seam_band
        As in :func:`evaluate_pair`.
    like : str or Path or tuple, optional
        Grid for two polygon files, as in :func:`load_labels`.

    Returns
    -------
    dict
        :func:`evaluate_pair`'s result plus ``prediction``, ``ground_truth``, ``tile_source`` (``"option"``,
        ``"run summary"`` or None) and, for a crop, ``origin``.

    Raises
    ------
    InputError
        A file problem (named in the message); ``ParameterError`` for a bad ``tile``/``seam_band``.
    """
    _check_params(tile, seam_band)
    pred_p, gt_p = Path(pred_path), Path(gt_path)
    pk, gk = kind(pred_p), kind(gt_p)
    summary = run_summary(pred_p) if pk == "vector" else None
    source = "option" if tile is not None else None
    if tile is None and summary is not None:
        tile, source = _summary_tile(pred_p, summary), "run summary"
    run_grid = None
    if summary is not None:
        try:
            run_grid = summary_grid(pred_p, summary)
        except InputError:
            if gk == "vector" and like is None:
                raise  # it is the only grid there is
    if gk == "raster":
        gt, transform, crs = read_raster(gt_p)
        if pk == "raster":
            pred, p_transform, p_crs = read_raster(pred_p)
            if pred.shape != gt.shape:
                raise InputError(f"evaluate: {pred_p} is {pred.shape[0]}x{pred.shape[1]} px but {gt_p} is "
                                 f"{gt.shape[0]}x{gt.shape[1]} px; expected label images of one grid, crop or resample one of them")
            if crs is not None and p_crs is not None and not p_transform.almost_equals(transform):
                raise InputError(f"evaluate: {pred_p} and {gt_p} have different geotransforms ({tuple(p_transform)[:6]} vs "
                                 f"{tuple(transform)[:6]}); expected one pixel grid, resample one onto the other")
        else:
            if run_grid is not None and crs is None and tuple(transform)[:6] == PIXEL_TRANSFORM and gt.shape == run_grid[0]:
                transform = run_grid[1]  # a label image of the whole scene saved without its georeferencing
            pred = rasterize(pred_p, (gt.shape, transform, crs))
    elif pk == "raster":
        pred, transform, crs = read_raster(pred_p)
        gt = rasterize(gt_p, (pred.shape, transform, crs))
    else:
        grid = grid_of(like) or run_grid
        if grid is None:
            raise InputError(f"evaluate: {pred_p} and {gt_p} are both polygons, found no pixel grid to compare them on "
                             f"(no run summary {pred_p.with_suffix('.json').name}); pass --like RASTER, the image they were drawn on")
        pred, gt = rasterize(pred_p, grid), rasterize(gt_p, grid)
        transform = grid[1]
    result = {"prediction": str(pred_p), "ground_truth": str(gt_p), "tile_source": source}
    if pk == "vector" and gk == "vector" and (per := _per_class(pred_p, gt_p, grid)):
        result["per_class"] = per
    placed = _origin_in_run(gt.shape, transform, run_grid)
    if placed is None:
        result.update(evaluate_pair(pred, gt, seam_band=seam_band))
        if tile is not None:
            result["note"] = "the evaluated grid does not align with the run's pixel grid: seam/interior split omitted"
        return result
    origin, scene_shape = placed
    result.update(evaluate_pair(pred, gt, tile=tile, seam_band=seam_band, origin=origin, scene_shape=scene_shape))
    if origin != (0, 0):
        result["origin"] = list(origin)
    return result


def _per_class(pred_p: Path, gt_p: Path, grid) -> dict | None:
    """Scores at IoU 0.5 per class (matching within the class) when both polygon files have a ``class``
    column, share a class and hold two or more classes between them; else None."""
    pc, gc = read_vector(pred_p), read_vector(gt_p)
    if "class" not in pc.columns or "class" not in gc.columns:
        return None
    p_cls, g_cls = set(pc["class"].astype(str)), set(gc["class"].astype(str))
    if not p_cls & g_cls or len(p_cls | g_cls) < 2:
        return None
    out = {}
    for c in sorted(p_cls | g_cls):
        r = evaluate_pair(rasterize(pred_p, grid, c), rasterize(gt_p, grid, c))["all"]
        out[c] = {"n_gt": r["n_gt"], "n_pred": r["n_pred"], **{k: r["at_0.5"][k] for k in ("tp", "fp", "fn", "f1", "precision", "recall")}}
    return out


def format_table(result: dict) -> str:
    """Render a result of :func:`evaluate_pair` or :func:`evaluate_files` as a plain-text table.

    One row per metric and one column per group (all, seam, interior), so that a seam score far below the
    interior one stands out next to it.

    Parameters
    ----------
    result : dict
        As returned (or read back from the JSON written by the CLI).

    Returns
    -------
    str
        Lines without a trailing newline.
    """
    groups = [g for g in ("all", "seam", "interior") if g in result]
    h, w = result.get("shape", ["?", "?"])
    lines = []
    if "prediction" in result:
        lines += [f"prediction:   {result['prediction']}", f"ground truth: {result['ground_truth']}"]
    tile = result.get("tile")
    grid = f"grid {h} x {w} px"
    if tile is not None:
        src = f" from {result['tile_source']}" if result.get("tile_source") else ""
        grid += f"; tile {tile} px{src}; seam band {result.get('seam_band')} px"
    lines += [grid, ""]
    lines.append(f"{'':<24}" + "".join(f"{g:>10}" for g in groups))

    def row(label: str, get, fmt: str = "{:.3f}") -> None:
        lines.append(f"{label:<24}" + "".join(f"{fmt.format(get(result[g])):>10}" for g in groups))

    row("ground-truth objects", lambda r: r["n_gt"], "{:d}")
    row("predicted objects", lambda r: r["n_pred"], "{:d}")
    for i, t in enumerate(result[groups[0]]["thresholds"]):
        row(f"AP@{t:.2f}", lambda r, i=i: r["ap"][i])
    row("mean AP 0.50:0.95", lambda r: r["ap_mean"])
    for key, label in (("f1", "F1"), ("precision", "precision"), ("recall", "recall"), ("pq", "PQ"),
                       ("mean_matched_iou", "mean matched IoU")):
        row(f"{label}@0.50", lambda r, key=key: r["at_0.5"][key])
    for key in ("tp", "fp", "fn"):
        row(f"{key.upper()}@0.50", lambda r, key=key: r["at_0.5"][key], "{:d}")
    row("splits", lambda r: r["splits"], "{:d}")
    row("merges", lambda r: r["merges"], "{:d}")
    if result.get("per_class"):
        lines += ["", f"{'per class (IoU 0.50)':<24}{'truth':>8}{'pred':>8}{'TP':>6}{'FP':>6}{'FN':>6}{'F1':>8}"]
        for c, r in result["per_class"].items():
            lines.append(f"{c:<24}{r['n_gt']:>8}{r['n_pred']:>8}{r['tp']:>6}{r['fp']:>6}{r['fn']:>6}{r['f1']:>8.3f}")
    if "seam" in result:
        lines += ["", f"seam: objects within {result['seam_band']} px of a tile seam; TP/FN counted by ground-truth "
                  "object, FP by predicted object"]
    if result.get("note"):
        lines += ["", f"note: {result['note']}"]
    return "\n".join(lines)


