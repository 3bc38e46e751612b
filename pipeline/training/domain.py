"""A checkpoint's training domain: what it was trained on and how it behaves there, as the ``domain`` key of its
JSON — the reference the quality verdict of every run is judged against (:mod:`pipeline.stages.quality`).

Made by ``seamline model-card CHECKPOINT --data DIR | --config TRAIN.yaml`` (and at the end of ``seamline
train``) from the images the checkpoint was trained and validated on (its JSON names the validation images):
the statistics a run measures, over the same pixels in the same way (:mod:`pipeline.stages.domain`), so that the
comparison is like with like. Quantiles, never images: the record is a few kB. Keys (docs/MODEL.md,
"Quality verdict"):

``modality``
    the model's domain in one label: ``aerial`` for a model whose ``pixel_size`` is in metres, else the
    commonest label of its training images.
``modalities``
    per modality label of the training images (judged as images, without georeferencing): ``share`` of the
    images, ``images``, and on the validation images of that label ``val_images`` and ``val_f1`` (F1 at IoU
    0.5, or box IoU 0.4 for box data).
``pixel``
    ``[size, unit]`` of one working pixel: the checkpoint's ``pixel_size``, or for a model that states its
    objects' size (``object_diameter_um`` / ``_px``) the µm per pixel that implies; ``[1, "px"]`` otherwise.
``colour``
    per modality label (and ``all``): for each Lab quantile of :data:`pipeline.stages.domain.COLOUR_KEYS`, its
    ``[min, p05, p50, p95, max]`` over the training images.
``channels``
    per model channel: the median over images of each image's 5th, 50th and 95th percentile (normalised).
``objects``
    from the labels of all training images (box data: the inscribed ellipses it trains on): ``area_px``
    quantiles (p01 … p99, max) of the objects in working pixels (and ``area`` in ``area_unit`` where the
    pixel size is known), ``image_median_area_px``, ``coverage`` (share of an image's pixels in objects) and
    ``density_per_mpx`` (objects per million pixels), each as ``[min, p05, p50, p95, max]`` over images.
``validation``
    the checkpoint's own predictions on its validation images, with its post-processing: ``score`` quantiles
    (p01 … p50) of the per-object score (mean foreground probability, as a run computes it), ``area_px``,
    ``coverage`` and ``density_per_mpx`` as above, ``objects`` and ``f1``.

Run it again after ``seamline tune`` (the post-processing changes the validation predictions).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.evaluation.boxes import box_counts, boxes_of_labels
from pipeline.evaluation.metrics import counts_at
from pipeline.models.checkpoint import checkpoint_paths, load_metadata
from pipeline.stages.domain import COLOUR_KEYS, detect, image_domain
from pipeline.training.boxloss import ellipse_labels
from pipeline.training.samples import Sample

__all__ = ["domain_record", "write_domain_record", "checkpoint_samples", "store_record", "model_pixel", "RECORD_FORMAT"]

RECORD_FORMAT = 1
SPREAD = (0, 5, 50, 95, 100)  # [min, p05, p50, p95, max] over images
AREA_Q = {"p01": 1, "p05": 5, "p25": 25, "p50": 50, "p75": 75, "p95": 95, "p99": 99, "max": 100}
SCORE_Q = {"p01": 1, "p05": 5, "p10": 10, "p25": 25, "p50": 50}


def _r(x: float) -> float:
    """Four significant digits: the record is read by people and compared with margins far above that."""
    return float(f"{float(x):.4g}") + 0.0


def _spread(values) -> list[float] | None:
    v = np.asarray(list(values), np.float64)
    return [_r(x) for x in np.percentile(v, SPREAD)] if v.size else None


def _quantiles(values: np.ndarray, qs: dict[str, float]) -> dict[str, float] | None:
    v = np.asarray(values, np.float64)
    return {k: _r(np.percentile(v, q)) for k, q in qs.items()} if v.size else None


def model_pixel(md: dict) -> tuple[float, str]:
    """One working pixel of the model in real units (see ``pixel`` in the module docstring)."""
    ps = md.get("pixel_size")
    if ps:
        return float(ps[0]), str(ps[1])
    if md.get("object_diameter_um") and md.get("object_diameter_px"):
        return float(md["object_diameter_um"]) / float(md["object_diameter_px"]), "um"
    return 1.0, "px"


def _labels(s: Sample) -> np.ndarray:
    """The sample's instance labels; box samples train on the ellipses inscribed in their boxes."""
    if s.boxes is not None:
        return ellipse_labels(np.asarray(s.boxes, np.float64), s.labels.shape)
    return s.labels


def _object_stats(labels: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Areas (px) of the objects of one label image, the share of its pixels they cover, objects per Mpx."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return areas, float((labels > 0).mean()), areas.size / labels.size * 1e6


def _objects_block(per_image: list[tuple[np.ndarray, float, float]], pixel: tuple[float, str]) -> dict[str, Any]:
    areas = np.concatenate([a for a, _, _ in per_image]) if per_image else np.zeros(0)
    out: dict[str, Any] = {"objects": int(areas.size), "area_px": _quantiles(areas, AREA_Q),
                           "image_median_area_px": _spread(np.median(a) for a, _, _ in per_image if a.size),
                           "coverage": _spread(c for _, c, _ in per_image),
                           "density_per_mpx": _spread(d for _, _, d in per_image)}
    if pixel[1] != "px":
        out["area"] = _quantiles(areas * pixel[0] ** 2, AREA_Q)
        out["area_unit"] = f"{pixel[1]}2"
    return out


def _predict(checkpoint: str, samples: list[Sample]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(labels, per-pixel score) of the checkpoint on each sample, with its own post-processing."""
    from pipeline.models.learned import LearnedModel  # late: torch loads only when a record is made

    model = LearnedModel(checkpoint, device="auto")
    return [model.instances(model.predict_heads(model.prepare(_seen(s))[None])[0]) for s in samples]


def _seen(s: Sample) -> np.ndarray:
    """The normalised pixels a run would have, before the checkpoint's ``input`` transform: a brightfield sample's
    ``raw`` transmission (its ``image`` is already the H&E model's input, pipeline/models/stain.py), else ``image``."""
    return s.raw if s.raw is not None else s.image


def domain_record(checkpoint: str, samples: list[Sample], val_samples: list[Sample]) -> dict[str, Any]:
    """The ``domain`` record (module docstring) of ``checkpoint`` from ``samples`` (all images it was trained
    and validated on) and ``val_samples`` (the validation ones; they are predicted with the checkpoint)."""
    md = load_metadata(checkpoint)
    pixel = model_pixel(md)
    doms = [image_domain(s.detected or detect(_seen(s)), _seen(s)) for s in samples]
    labels = [d["modality"] for d in doms]
    n = len(samples)
    counts = Counter(labels)
    colour: dict[str, dict] = {}
    for lab in [*sorted(counts), "all"]:
        sel = [d["colour"] for d in doms if lab == "all" or d["modality"] == lab]
        colour[lab] = {k: _spread(c[k] for c in sel if k in c) for k in COLOUR_KEYS}
    chans = [d["channels"] for d in doms if d["channels"]]
    channels = [[_r(np.median([c[i][j] for c in chans])) for j in range(3)] for i in range(len(chans[0]))] if chans else []
    declared = "aerial" if pixel[1] == "m" else (counts.most_common(1)[0][0] if counts else "unknown")
    record: dict[str, Any] = {
        "format": RECORD_FORMAT, "seamline_version": __version__, "images": n, "val_images": len(val_samples),
        "modality": declared, "pixel": [_r(pixel[0]), pixel[1]],
        "modalities": {lab: {"share": _r(k / n), "images": k} for lab, k in sorted(counts.items())},
        "colour": colour, "channels": channels,
        "objects": _objects_block([_object_stats(_labels(s)) for s in samples], pixel),
    }
    if val_samples:
        preds = _predict(checkpoint, val_samples)
        scores, per_image = [], []
        tallies: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        by_name = {s.name: lab for s, lab in zip(samples, labels)}
        for s, (pred, prob) in zip(val_samples, preds):
            st = _object_stats(pred)
            per_image.append(st)
            k = np.bincount(pred.ravel(), minlength=1)[1:]
            sums = np.bincount(pred.ravel(), weights=prob.ravel(), minlength=k.size + 1)[1:]
            scores.append(sums[k > 0] / k[k > 0])
            c = (box_counts(s.boxes, boxes_of_labels(pred), s.box_counted) if s.boxes is not None
                 else counts_at(s.labels, pred))
            lab = by_name.get(s.name) or image_domain(s.detected or detect(_seen(s)), _seen(s))["modality"]
            for key in (lab, "all"):
                t = tallies[key]
                t[0], t[1], t[2], t[3] = t[0] + c[0], t[1] + c[1], t[2] + c[2], t[3] + 1

        def f1(t):
            return _r(2 * t[0] / max(1, 2 * t[0] + t[1] + t[2]))

        for lab, t in tallies.items():
            if lab in record["modalities"]:
                record["modalities"][lab].update(val_images=t[3], val_f1=f1(t))
        record["validation"] = {**_objects_block(per_image, pixel),
                                "score": _quantiles(np.concatenate(scores) if scores else np.zeros(0), SCORE_Q),
                                "f1": f1(tallies["all"])}
    return record


def checkpoint_samples(checkpoint: str, data) -> tuple[list[Sample], list[Sample]]:
    """The images ``checkpoint`` was trained and validated on, loaded from ``data`` (a training config's ``data:``
    section, or a folder with images/ and labels/) as it was trained (GSD, classes, network input), and the
    validation ones among them (the names its JSON records)."""
    from pipeline.training.config import DataConfig
    from pipeline.training.data import load_samples  # late: the training stack

    if isinstance(data, str):
        data = DataConfig(kind="folders", root=data)
    md = load_metadata(checkpoint)
    px = md.get("pixel_size")
    samples = load_samples(data, int(md["in_channels"]), px[0] if px else None, md.get("classes"),
                           input_kind=md.get("input", "bands"))
    names = set(md.get("training", {}).get("val_names") or [])
    return samples, [s for s in samples if s.name in names]


def write_domain_record(checkpoint: str, data, write: bool = True) -> dict[str, Any]:
    """Load the images ``checkpoint`` was trained on from ``data`` (:func:`checkpoint_samples`), make its record and
    (``write``) store it as ``domain`` in its JSON."""
    record = domain_record(checkpoint, *checkpoint_samples(checkpoint, data))
    if write:
        store_record(checkpoint, record)
    return record


def store_record(checkpoint: str, record: dict[str, Any]) -> None:
    """Write ``record`` as the ``domain`` key of the checkpoint's JSON (the rest kept as it is)."""
    md = load_metadata(checkpoint)
    md["domain"] = record
    _, meta = checkpoint_paths(checkpoint)
    meta.write_text(json.dumps(md, indent=2, sort_keys=True) + "\n")
