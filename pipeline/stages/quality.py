"""Stage 7b (quality): may this run's objects be trusted? A verdict — ``ok``, ``doubtful`` or ``unreliable`` —
with one line per reason and the numbers it rests on, from what the run already has: the scene's domain
statistics (measured on the ingest sample, :mod:`pipeline.stages.domain`) and the objects it wrote, compared
with the checkpoint's training domain (its JSON's ``domain`` record, :mod:`pipeline.training.domain`).

Pure functions over dicts and arrays (the only file read is the staged GeoParquet's ``area_px``, ``score`` and
``doubtful`` columns). The rule and its calibration on real files are in docs/MODEL.md, "Quality verdict"
(``bench/quality_calibration.py``).

Signals and what each one says (thresholds: the module constants below):

* ``modality_share`` — the share of the model's training images of the scene's modality (a georeferenced
  scene is ``aerial``; an aerial model's share of it is 1). Under :data:`NEVER_SHARE`: the model never saw
  such images: **unreliable**. Under :data:`RARE_SHARE`, or ``modality_val_f1_ratio`` (that modality's
  validation F1 over the model's overall) under :data:`WEAK_F1_RATIO`: **doubtful**.
* ``pixel_unit_match`` — 0 when the scene's pixels are in m and the model's in µm or the other way round:
  **unreliable**.
* ``colour_distance`` — how far (CIE Lab units) the scene's colour quantiles lie outside the range of the
  training images of its modality; over :data:`COLOUR_DOUBTFUL`: **doubtful**.
* ``area_factor`` — the scene's median object area against the range of the training images' medians
  (labels and validation predictions), as a factor ≥ 1 (×3 = three times the largest or a third of the
  smallest); over :data:`AREA_DOUBTFUL` **doubtful**, over :data:`AREA_UNRELIABLE` **unreliable**.
* ``coverage`` — the share of the scene (the tissue, when detected) that objects cover; over
  :data:`COVERAGE_FACTOR` × the most a training image had, and over :data:`COVERAGE_MIN`: **doubtful**.
* ``low_score_share`` — the share of objects that score below the model's validation 5th percentile (5 % in
  its own domain); over :data:`LOW_SCORE_DOUBTFUL` **doubtful**, over :data:`LOW_SCORE_UNRELIABLE`
  **unreliable**.

A model without a record (the classical model, a checkpoint from before records) gets the scene-level checks
only: the verdict is ``ok`` unless objects cover more than :data:`CLASSICAL_COVERAGE` of the scene.

Per object, ``doubtful`` (a column of the outputs) is true for an object over :data:`OBJECT_AREA_FACTOR` × the
largest object of the training domain, or scoring below the validation 1st percentile.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.stages.domain import WORDS

__all__ = ["assess", "assess_run", "object_limits", "doubtful_objects", "object_statistics", "quality_line",
           "refuses", "VERDICTS"]

VERDICTS = ("ok", "doubtful", "unreliable")
NEVER_SHARE = 0.02
RARE_SHARE = 0.25
WEAK_F1_RATIO = 0.8
COLOUR_DOUBTFUL = 20.0
AREA_DOUBTFUL = 5.0  # calibrated: a Kampala chip of small roofs at 4.3 (in domain); docs/MODEL.md
AREA_UNRELIABLE = 10.0
COVERAGE_FACTOR = 1.5
COVERAGE_MIN = 0.3
LOW_SCORE_DOUBTFUL = 0.35
LOW_SCORE_UNRELIABLE = 0.7
CLASSICAL_COVERAGE = 0.6
OBJECT_AREA_FACTOR = 3.0
MIN_OBJECTS = 5  # fewer objects than this: no object statistics are judged
COLOUR_WORDS = {"L_p05": "dark end (5th percentile lightness L*)", "L_p50": "median lightness L*",
                "L_p95": "bright end (95th percentile lightness L*)", "a_p50": "median red–green a*",
                "b_p50": "median yellow–blue b*", "C_p50": "median chroma", "C_p95": "95th percentile chroma"}
UNIT_WORDS = {"um": "µm", "m": "m"}


def object_limits(md: dict | None) -> dict[str, float] | None:
    """Per-object thresholds from a checkpoint's metadata: ``max_area_px`` (above it an object is far outside
    the training size range) and ``min_score`` (below it, a low score); None without a domain record."""
    rec = (md or {}).get("domain")
    if not rec:
        return None
    tops = [b["area_px"]["max"] for b in (rec.get("objects"), rec.get("validation")) if b and b.get("area_px")]
    out: dict[str, float] = {}
    if tops:
        out["max_area_px"] = OBJECT_AREA_FACTOR * max(tops)
    score = (rec.get("validation") or {}).get("score")
    if score:
        out["min_score"] = float(score["p01"])
    return out or None


def doubtful_objects(area_px: np.ndarray, score: np.ndarray, limits: dict[str, float] | None) -> np.ndarray:
    """The per-object ``doubtful`` flag (module docstring); all False without limits."""
    area_px, score = np.asarray(area_px), np.asarray(score)
    flag = np.zeros(area_px.shape, bool)
    if limits:
        if "max_area_px" in limits:
            flag |= area_px > limits["max_area_px"]
        if "min_score" in limits:
            flag |= score < limits["min_score"]
    return flag


def object_statistics(parquet: str) -> dict[str, np.ndarray]:
    """``area_px``, ``score`` and ``doubtful`` of every object of a (staged) GeoParquet file."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(parquet)
    cols = [c for c in ("area_px", "score", "doubtful") if c in f.schema_arrow.names]
    t = f.read(columns=cols)
    out = {c: t.column(c).to_numpy() for c in cols}
    out.setdefault("doubtful", np.zeros(t.num_rows, bool))
    return out


def _envelope_excess(colour: dict[str, float], env: dict[str, list | None]) -> tuple[float, str | None, list | None]:
    """Largest distance (Lab units) of a colour quantile outside its training [min, max]; its key and range."""
    worst, key, rng = 0.0, None, None
    for k, v in colour.items():
        r = env.get(k)
        if not r:
            continue
        d = max(0.0, v - r[-1], r[0] - v)
        if d > worst:
            worst, key, rng = d, k, r
    return worst, key, rng


def _modality(rec: dict, scene: dict, sig: dict, hard: list, soft: list) -> str:
    """Modality signals; returns the label whose colour envelope the scene is compared with."""
    label = scene.get("modality") or "unknown"
    if label == "unknown":
        return "all"
    mods = rec.get("modalities") or {}
    declared = rec.get("modality", "unknown")
    share = 1.0 if (label == "aerial" and declared == "aerial") else float((mods.get(label) or {}).get("share", 0.0))
    sig["modality_share"] = round(share, 4)
    trained = WORDS.get(declared, declared)
    if share < NEVER_SHARE:
        hard.append(f"{WORDS.get(label, label)} input; the model was trained on {trained}")
        return "all"
    f1 = (mods.get(label) or {}).get("val_f1")
    f1_all = (rec.get("validation") or {}).get("f1")
    ratio = f1 / f1_all if f1 is not None and f1_all else None
    if ratio is not None:
        sig["modality_val_f1_ratio"] = round(ratio, 3)
    if share < RARE_SHARE or (ratio is not None and ratio < WEAK_F1_RATIO):
        how = f", validation F1 {f1:.2f} against {f1_all:.2f} overall" if ratio is not None else ""
        soft.append(f"{WORDS.get(label, label)} input; only {share:.0%} of the model's training images were{how} "
                    f"(it was trained on {trained})")
    return label if label in (rec.get("colour") or {}) and int((mods.get(label) or {}).get("images", 0)) >= 5 else "all"


def _objects(rec: dict | None, objects: dict[str, np.ndarray], valid_px: float | None, sig: dict, hard: list,
             soft: list) -> None:
    area, score = objects.get("area_px", np.zeros(0)), objects.get("score", np.zeros(0))
    n = int(area.size)
    sig["objects"] = n
    if n:
        sig["doubtful_share"] = round(float(np.mean(objects.get("doubtful", np.zeros(n, bool)))), 4)
    if valid_px:
        cov = float(area.sum()) / float(valid_px)
        sig["coverage"] = round(cov, 4)
        sig["density_per_mpx"] = round(n / float(valid_px) * 1e6, 3)
    if rec is None:
        if sig.get("coverage", 0.0) > CLASSICAL_COVERAGE:
            soft.append(f"objects cover {sig['coverage']:.0%} of the scene")
        return
    if n < MIN_OBJECTS:
        return
    blocks = [b for b in (rec.get("objects"), rec.get("validation")) if b]
    meds = [m for b in blocks if b.get("image_median_area_px") for m in (b["image_median_area_px"][0], b["image_median_area_px"][-1])]
    med = float(np.median(area))
    sig["median_area_px"] = round(med, 2)
    if meds and min(meds) > 0:
        lo, hi = min(meds), max(meds)
        factor = max(1.0, med / hi, lo / med)
        sig["area_factor"] = round(factor, 3)
        if factor > AREA_DOUBTFUL:
            what = f"{med / hi:.1f}× the largest" if med > hi else f"1/{lo / med:.1f} of the smallest"
            (hard if factor > AREA_UNRELIABLE else soft).append(
                f"median object area {what} median of a training image ({med:.0f} px against {lo:.0f}–{hi:.0f} px)")
    covs = [b["coverage"][-1] for b in blocks if b.get("coverage")]
    if covs and "coverage" in sig:
        top = max(covs)
        if sig["coverage"] > max(COVERAGE_FACTOR * top, COVERAGE_MIN):
            soft.append(f"objects cover {sig['coverage']:.0%} of the scene; at most {top:.0%} of a training image")
    p05 = ((rec.get("validation") or {}).get("score") or {}).get("p05")
    if p05 is not None:
        low = float(np.mean(score < p05))
        sig["low_score_share"] = round(low, 4)
        if low > LOW_SCORE_DOUBTFUL:
            (hard if low > LOW_SCORE_UNRELIABLE else soft).append(
                f"{low:.0%} of objects score below the model's validation 5th percentile ({p05:.2f}; 5 % in its domain)")


def assess(md: dict | None, scene: dict | None, objects: dict[str, np.ndarray], valid_px: float | None,
           scene_unit: str | None) -> dict[str, Any]:
    """The verdict of one run.

    Parameters
    ----------
    md : dict or None
        The checkpoint's metadata (its ``domain`` record and pixel size); None for the classical model.
    scene : dict or None
        The scene's domain (:func:`pipeline.stages.domain.image_domain`, from the ingest statistics).
    objects : dict of arrays
        ``area_px`` (working pixels), ``score`` and ``doubtful`` per object (:func:`object_statistics`).
    valid_px : float or None
        Working pixels of the scene's valid area (the tissue, when detected).
    scene_unit : str or None
        ``m`` (georeferenced), ``um`` (microscopy with a pixel size) or None.

    Returns
    -------
    dict
        ``{"verdict": "ok" | "doubtful" | "unreliable", "reasons": [...], "signals": {name: number}}``.
    """
    rec = (md or {}).get("domain")
    hard: list[str] = []
    soft: list[str] = []
    sig: dict[str, float] = {}
    scene = scene or {}
    if rec is not None:
        env_label = _modality(rec, scene, sig, hard, soft)
        model_unit = (rec.get("pixel") or [None, "px"])[1]
        if scene_unit in UNIT_WORDS and model_unit in UNIT_WORDS:
            sig["pixel_unit_match"] = float(scene_unit == model_unit)
            if scene_unit != model_unit:
                hard.append(f"pixel size in {UNIT_WORDS[scene_unit]}, the model's in {UNIT_WORDS[model_unit]}")
        env = (rec.get("colour") or {}).get(env_label) or {}
        dist, key, rng = _envelope_excess(scene.get("colour") or {}, env)
        if scene.get("colour") and env:
            sig["colour_distance"] = round(dist, 2)
            if dist > COLOUR_DOUBTFUL and key is not None:
                soft.append(f"colours unlike the model's training images: {COLOUR_WORDS.get(key, key)} "
                            f"{scene['colour'][key]:.0f}, training {rng[0]:.0f} to {rng[-1]:.0f}")
    _objects(rec, objects, valid_px, sig, hard, soft)
    verdict = "unreliable" if hard else ("doubtful" if soft else "ok")
    out: dict[str, Any] = {"verdict": verdict, "reasons": [*hard, *soft], "signals": sig}
    if rec is None:
        out["note"] = ("no training-domain record (the classical model, or a checkpoint without one: seamline "
                       "model-card adds it): only the objects' coverage was checked")
    return out


def assess_run(summary: dict[str, Any], parquet: str, md: dict | None) -> dict[str, Any]:
    """:func:`assess` from a run summary (its scene statistics, pixel size, CRS, valid area) and its staged
    GeoParquet file."""
    scene = (summary.get("stats") or {}).get("domain")
    unit = "m" if summary.get("crs") else ("um" if summary.get("pixel_size_um") else None)
    valid = summary.get("tissue_px") or summary.get("valid_px")
    return assess(md, scene, object_statistics(parquet), valid, unit)


def refuses(quality: dict[str, Any], fail_on: str | None) -> bool:
    """Whether a verdict meets ``fail_on`` (``unreliable``, or ``doubtful`` which includes unreliable)."""
    if not fail_on:
        return False
    return VERDICTS.index(quality["verdict"]) >= VERDICTS.index(fail_on)


def quality_line(stem: str, quality: dict[str, Any]) -> str:
    """One line for the end of a run: the verdict and its reasons."""
    reasons = "; ".join(quality.get("reasons") or [])
    return f"{stem}: quality {quality['verdict']}" + (f": {reasons}" if reasons else "")
