"""``seamline evaluate``: score a prediction against ground truth, overall and near tile seams.

Both sides become label images on one pixel grid (0 = background, one id per object): label images are
read as they are, vector polygons are rasterized with one id per row onto the grid of the raster side (or,
when both are vectors, the grid of ``--like`` or of the run summary beside a Seamline output). Matching is
one-to-one on IoU (:mod:`pipeline.evaluation.metrics`), done once over the whole image; the counts are then split
between objects near a tile seam and the rest, because a tiled run can only go wrong at its seams: a seam
score far below the interior one points at the stitch, not at the model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from pipeline.errors import InputError, ParameterError
from pipeline.evaluation.metrics import THRESHOLDS, match_labels

__all__ = ["load_labels", "evaluate_pair", "evaluate_files", "format_table", "add_evaluate_command",
           "RASTER_SUFFIXES", "VECTOR_SUFFIXES"]

RASTER_SUFFIXES = (".tif", ".tiff", ".png")
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".parquet")


def _kind(path: Path) -> str:
    """'raster' or 'vector' from the suffix, after checking that the file exists."""
    if not path.exists():
        raise InputError(f"evaluate: {path}: file not found; check the path")
    if path.is_dir():
        raise InputError(f"evaluate: {path}: is a folder, expected a label image or vector file; pass the file itself")
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return "raster"
    if suffix in VECTOR_SUFFIXES:
        return "vector"
    raise InputError(f"evaluate: {path}: unsupported file type '{suffix or '(none)'}'; expected a label image "
                     f"({', '.join(RASTER_SUFFIXES)}) or polygons ({', '.join(VECTOR_SUFFIXES)}); convert it to one of these")


def _run_summary(path: Path) -> dict | None:
    """The run summary ``<stem>.json`` written beside a Seamline output, or None if there is none."""
    js = path.with_suffix(".json")
    if not js.is_file():
        return None
    try:
        summary = json.loads(js.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"evaluate: run summary {js}: not readable JSON ({exc}); re-run seamline or pass --like/--tile") from None
    if not isinstance(summary, dict):
        raise InputError(f"evaluate: run summary {js}: expected a JSON object, found {type(summary).__name__}; re-run seamline")
    return summary


def _summary_grid(path: Path, summary: dict):
    from affine import Affine

    try:
        shape = (int(summary["height"]), int(summary["width"]))
        transform = Affine(*[float(v) for v in summary["transform"][:6]])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"evaluate: run summary {path.with_suffix('.json')}: expected keys width, height and a 6-number "
                         f"transform, found a problem with {exc}; re-run seamline or pass --like RASTER") from None
    return shape, transform, None


def _read_raster(path: Path):
    """(labels, transform, crs) of a label image; GeoTIFFs keep their georeferencing, others get identity."""
    from affine import Affine

    if path.suffix.lower() == ".png":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except (OSError, UnidentifiedImageError) as exc:
            raise InputError(f"evaluate: {path}: not a readable PNG ({exc}); re-export the label image") from None
    else:
        import tifffile

        try:
            arr = tifffile.imread(path)
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, codec errors, ...
            raise InputError(f"evaluate: {path}: not a readable TIFF ({str(exc)[:160]}); re-export the label image") from None
    while arr.ndim > 2 and 1 in (arr.shape[0], arr.shape[-1]):  # (1, H, W) pages, (H, W, 1) samples
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"evaluate: {path}: expected a 2-D label image (one value per pixel), found shape {arr.shape}; "
                         "save a single-band integer label image")
    grid = _raster_grid(path)  # a TIFF flavour GDAL cannot read has no georeferencing it could read either
    transform, crs = (grid[1], grid[2]) if grid and grid[0] == arr.shape else (Affine.identity(), None)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError(f"evaluate: {path}: expected integer object ids, found non-integer {arr.dtype} values; "
                             "save the labels as an integer image")
    elif arr.dtype.kind not in "biu":
        raise InputError(f"evaluate: {path}: expected integer object ids, found pixel type {arr.dtype}; save an integer label image")
    if arr.size and arr.min() < 0:
        raise InputError(f"evaluate: {path}: expected object ids ≥ 0 (0 = background), found {arr.min()}; relabel the image")
    return arr.astype(np.int64), transform, crs


def _raster_grid(path: Path):
    """``(shape, transform, crs)`` from the header only (any band count), or None if GDAL cannot read it.

    GeoTIFFs keep their georeferencing; GDAL gives a plain TIFF or a PNG the identity transform (x = column,
    y = row), the pixel coordinates Seamline writes for such images.
    """
    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning: expected for microscopy images
            with rasterio.open(path) as ds:
                return (ds.height, ds.width), ds.transform, ds.crs
    except rasterio.errors.RasterioError:
        return None


def _read_vector(path: Path):
    import geopandas as gpd

    try:
        if path.suffix.lower() == ".parquet":
            return gpd.read_parquet(path)
        layer = None
        if path.suffix.lower() == ".gpkg":
            import pyogrio

            layers = [str(name) for name in pyogrio.list_layers(path)[:, 0]]
            if "objects" in layers or len(layers) > 1:
                if "objects" not in layers:
                    raise InputError(f"evaluate: {path}: expected a layer 'objects' or a single layer, found layers "
                                     f"{layers}; keep only the polygon layer or name it 'objects'")
                layer = "objects"
        return gpd.read_file(path, layer=layer)
    except InputError:
        raise
    except Exception as exc:  # pyogrio/pyarrow/geopandas each raise their own types for unreadable files
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputError(f"evaluate: {path}: not readable as polygons ({first}); expected a GeoPackage, "
                         "GeoJSON or GeoParquet file") from None


def _rasterize(path: Path, grid, cls: str | None = None) -> np.ndarray:
    """Burn each row of a polygon file with its own id (row order, from 1) onto ``grid`` (only the rows of
    class ``cls`` when given)."""
    from rasterio.features import rasterize

    shape, transform, crs = grid
    gdf = _read_vector(path)
    if cls is not None:
        gdf = gdf[gdf["class"].astype(str) == cls]
    if crs is not None and gdf.crs is not None and gdf.crs != crs:
        gdf = gdf.to_crs(crs)  # a GeoTIFF and polygons in different CRSs would otherwise silently miss
    geoms = [(g, i + 1) for i, g in enumerate(gdf.geometry) if g is not None and not g.is_empty]
    bad = sorted({g.geom_type for g, _ in geoms} - {"Polygon", "MultiPolygon"})
    if bad:
        raise InputError(f"evaluate: {path}: expected Polygon or MultiPolygon geometries, found {', '.join(bad)}; "
                         "keep only the object outlines")
    if not geoms:
        return np.zeros(shape, np.int64)
    corners = np.array([transform * xy for xy in ((0, 0), (shape[1], 0), (0, shape[0]), (shape[1], shape[0]))])
    x0, y0, x1, y1 = gdf.total_bounds
    if x1 < corners[:, 0].min() or x0 > corners[:, 0].max() or y1 < corners[:, 1].min() or y0 > corners[:, 1].max():
        raise InputError(f"evaluate: {path}: no polygon falls on the {shape[0]}x{shape[1]} px grid (polygons span x {x0:g}..{x1:g}, "
                         f"y {y0:g}..{y1:g}; grid x {corners[:, 0].min():g}..{corners[:, 0].max():g}, y {corners[:, 1].min():g}.."
                         f"{corners[:, 1].max():g}); compare files of the same image and coordinate system")
    dtype = "int32" if len(gdf) < 2**31 - 1 else "int64"
    return rasterize(geoms, out_shape=shape, transform=transform, fill=0, dtype=dtype).astype(np.int64)


def _grid(like):
    """``like`` as ``(shape, transform, crs)``: from a raster path (any image, e.g. the RGB scene the
    polygons were drawn on; only its header is read) or a tuple ``(shape, transform[, crs])``."""
    from affine import Affine

    if like is None:
        return None
    if isinstance(like, (str, Path)):
        p = Path(like)
        if not p.is_file():
            raise InputError(f"evaluate: --like {p}: file not found; pass the image the polygons were drawn on")
        # only the grid is read: any raster GDAL opens (a VRT mosaic, JPEG 2000, ...), not just label images
        if p.suffix.lower() in VECTOR_SUFFIXES or (grid := _raster_grid(p)) is None:
            raise InputError(f"evaluate: --like {p}: expected a raster GDAL can read (GeoTIFF, VRT, PNG, ...), "
                             "found none; pass the image the polygons were drawn on")
        return grid
    shape, transform, *rest = like
    transform = transform if isinstance(transform, Affine) else Affine(*[float(v) for v in list(transform)[:6]])
    return (int(shape[0]), int(shape[1])), transform, (rest[0] if rest else None)


def _load(path: Path, like=None):
    """(labels, transform, crs)."""
    if _kind(path) == "raster":
        return _read_raster(path)
    grid = _grid(like)
    if grid is None:
        summary = _run_summary(path)
        if summary is None:
            raise InputError(f"evaluate: {path}: polygons need a pixel grid to be rasterized on, found no raster input "
                             f"and no run summary {path.with_suffix('.json').name}; pass --like RASTER (the image they were drawn on)")
        grid = _summary_grid(path, summary)
    return _rasterize(path, grid), grid[1], grid[2]


def load_labels(path, like=None):
    """Read a label image, or rasterize a polygon file with one id per row.

    Metrics compare pixels, so polygons must be burnt onto the grid of the image they describe; a wrong
    grid shows up as AP 0, hence the grid is never guessed.

    Parameters
    ----------
    path : str or Path
        ``.tif/.tiff/.png`` label image (0 = background) or ``.gpkg/.geojson/.parquet`` polygons.
    like : tuple or str or Path, optional
        For polygons: ``(shape, transform[, crs])`` or a raster path whose grid to use. Default: the run
        summary ``<stem>.json`` beside a Seamline output.

    Returns
    -------
    labels : ndarray of int64, 2-D
    transform : affine.Affine
        The GeoTIFF's transform, or identity (x = column, y = row) for a plain image.

    Raises
    ------
    InputError
        Missing or unreadable file, unsupported type, not a 2-D integer image, or no grid for polygons.
    """
    labels, transform, _ = _load(Path(path), like)
    return labels, transform


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
    pk, gk = _kind(pred_p), _kind(gt_p)
    summary = _run_summary(pred_p) if pk == "vector" else None
    source = "option" if tile is not None else None
    if tile is None and summary is not None:
        tile, source = _summary_tile(pred_p, summary), "run summary"
    run_grid = None
    if summary is not None:
        try:
            run_grid = _summary_grid(pred_p, summary)
        except InputError:
            if gk == "vector" and like is None:
                raise  # it is the only grid there is
    if gk == "raster":
        gt, transform, crs = _read_raster(gt_p)
        if pk == "raster":
            pred, p_transform, p_crs = _read_raster(pred_p)
            if pred.shape != gt.shape:
                raise InputError(f"evaluate: {pred_p} is {pred.shape[0]}x{pred.shape[1]} px but {gt_p} is "
                                 f"{gt.shape[0]}x{gt.shape[1]} px; expected label images of one grid, crop or resample one of them")
            if crs is not None and p_crs is not None and not p_transform.almost_equals(transform):
                raise InputError(f"evaluate: {pred_p} and {gt_p} have different geotransforms ({tuple(p_transform)[:6]} vs "
                                 f"{tuple(transform)[:6]}); expected one pixel grid, resample one onto the other")
        else:
            if run_grid is not None and crs is None and transform.is_identity and gt.shape == run_grid[0]:
                transform = run_grid[1]  # a label image of the whole scene saved without its georeferencing
            pred = _rasterize(pred_p, (gt.shape, transform, crs))
    elif pk == "raster":
        pred, transform, crs = _read_raster(pred_p)
        gt = _rasterize(gt_p, (pred.shape, transform, crs))
    else:
        grid = _grid(like) or run_grid
        if grid is None:
            raise InputError(f"evaluate: {pred_p} and {gt_p} are both polygons, found no pixel grid to compare them on "
                             f"(no run summary {pred_p.with_suffix('.json').name}); pass --like RASTER, the image they were drawn on")
        pred, gt = _rasterize(pred_p, grid), _rasterize(gt_p, grid)
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
    pc, gc = _read_vector(pred_p), _read_vector(gt_p)
    if "class" not in pc.columns or "class" not in gc.columns:
        return None
    p_cls, g_cls = set(pc["class"].astype(str)), set(gc["class"].astype(str))
    if not p_cls & g_cls or len(p_cls | g_cls) < 2:
        return None
    out = {}
    for c in sorted(p_cls | g_cls):
        r = evaluate_pair(_rasterize(pred_p, grid, c), _rasterize(gt_p, grid, c))["all"]
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


def _cmd_evaluate(args) -> int:
    if args.boxes:  # box-level: outlines' boxes vs truth boxes (NEON crown benchmark), per class
        from pipeline.evaluation.boxeval import evaluate_boxes, format_box_table

        if not 0 < args.box_iou <= 1:
            raise ParameterError(f"evaluate: --box-iou {args.box_iou}: expected a number in (0, 1], e.g. 0.4")
        result = evaluate_boxes(args.prediction, args.ground_truth, like=args.like, threshold=args.box_iou)
        print(format_box_table(result))
    else:
        result = evaluate_files(args.prediction, args.ground_truth, tile=args.tile, seam_band=args.seam_band, like=args.like)
        print(format_table(result))
    if args.json:
        out = Path(args.json)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            raise InputError(f"evaluate: --json {out}: cannot write the results ({exc.strerror}); choose a writable path") from None
    return 0


def add_evaluate_command(subparsers):
    """Register ``seamline evaluate`` on an argparse sub-parsers object.

    Kept here rather than in :mod:`pipeline.cli` so that the command's options live next to the code that
    reads them.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The result of ``parser.add_subparsers()``.

    Returns
    -------
    argparse.ArgumentParser
        The ``evaluate`` parser; its ``func(args)`` prints the table, writes ``--json`` and returns 0.
    """
    e = subparsers.add_parser(
        "evaluate", help="score a prediction against ground truth (AP, F1, PQ, splits/merges, seam vs interior)",
        description="Match predicted objects to ground-truth objects one-to-one on IoU and report AP at IoU "
                    "0.50:0.95, F1/precision/recall/PQ at 0.50, splits and merges, overall and for objects near "
                    "tile seams versus the interior.")
    e.add_argument("prediction", help="Seamline output (.parquet/.gpkg) or label image (.tif/.tiff/.png, 0 = background)")
    e.add_argument("ground_truth", help="label image (.tif/.tiff/.png) or polygons (.gpkg/.geojson/.parquet); "
                   "with --boxes also .xml/.csv boxes")
    e.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    e.add_argument("--seam-band", type=int, default=8, metavar="PX",
                   help="objects within PX pixels of a tile seam count as 'seam' (default 8)")
    e.add_argument("--tile", type=int, metavar="N",
                   help="tile size of the run (default: tiling.tile of the run summary beside the prediction)")
    e.add_argument("--like", metavar="RASTER", help="raster whose pixel grid to rasterize on when both inputs are polygons")
    e.add_argument("--boxes", action="store_true",
                   help="box-level scores: each outline's bounding box against truth boxes (VOC .xml, DeepForest .csv "
                        "or vector rectangles), one to one at --box-iou; per class when both sides have classes")
    e.add_argument("--box-iou", type=float, default=0.4, metavar="T", help="box IoU for a match with --boxes (default 0.4)")
    e.set_defaults(func=_cmd_evaluate)
    return e
