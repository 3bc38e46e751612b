"""``seamline adapt``: a local model for the area the user works in, fine-tuned from a shipped one.

The way the field builds models for a new town (HOT's fAIr, ramp) is a local model per area: a pretrained
base, the area's imagery cut into chips, the OpenStreetMap outlines that already exist there (or a few
corrected ones) as labels, a few epochs, and a score on held-out chips of the same area. Here it is one call:

1. the labels are read (:mod:`pipeline.training.labels`: GeoPackage, GeoJSON, ``.osm.pbf``) and the scenes
   cut into *places* (:mod:`pipeline.training.places`: web-map chips grouped by tile, larger scenes cut into
   squares of ``place_size`` metres), each resampled to the base model's ground pixel size;
2. only places inside the *labelled area* are used (the ``area`` polygons, else the convex hull of the
   labels): outside it an unmapped roof would be taught as background;
3. whole places are held out (``holdout``, seeded), the rest train — ``train_fraction`` of them, for
   learning curves;
4. the base model is scored on the hold-out (F1 at IoU 0.5, its own post-processing), fine-tuned on CPU for
   ``minutes`` with the whole state saved after every epoch (a re-run continues: :mod:`.resume`), and scored
   again. The hold-out never chooses the checkpoint (the last epoch is kept), so "after" is an honest figure;
5. the checkpoint (``OUT/<OUT name>``) carries both figures in its JSON card, and ``OUT/CARD.md`` says the same
   in words, with the credits of the data.

:func:`adapt_samples` is the shared second half: ``seamline adapt --from-review`` (:mod:`.review`) gives it
the windows a user corrected in QGIS instead of places.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from pipeline.errors import InputError, ParameterError
from pipeline.models.checkpoint import checkpoint_paths, load_metadata
from pipeline.models.registry import resolve_model_spec
from pipeline.training.card import write_card
from pipeline.training.config import AugmentConfig, DataConfig, HardNegativeConfig, TrainConfig
from pipeline.training.labels import read_labels
from pipeline.training.places import load_places_dataset, place_of, split_by_place
from pipeline.training.review import review_samples, truth_digest
from pipeline.training.samples import Sample
from pipeline.training.train import NO_EPOCH_CAP, run_checkpoint, train
from pipeline.training.tune import Scorer

__all__ = ["adapt", "adapt_from_review", "adapt_samples", "score_samples", "WEB_MERCATOR_Z19", "labelled_places"]

WEB_MERCATOR_Z19 = 76.43702828517625  # one zoom-19 web-map tile: the chip size of fAIr / OpenAerialMap exports


def _log(msg: str) -> None:
    print(f"adapt: {msg}", file=sys.stderr, flush=True)


def score_samples(checkpoint: str, samples: list[Sample], post: dict[str, Any] | None = None,
                  threads: int | None = None) -> dict[str, Any]:
    """F1, precision and recall at mask IoU 0.5 of ``checkpoint`` (with ``post``, default its own
    post-processing) on ``samples``, counts summed over them."""
    from pipeline.models.learned import LearnedModel

    model = LearnedModel(checkpoint, device="auto", threads=threads)
    post = dict(post or model.meta["postprocess"])
    heads = [model.predict_heads(s.image[None])[0] for s in samples]
    r = Scorer(heads, samples).score(post)["all"]
    tp, fp, fn = r["tp"], r["fp"], r["fn"]
    return {"f1": round(r["f1"], 4), "precision": round(tp / max(1, tp + fp), 4), "recall": round(tp / max(1, tp + fn), 4),
            "tp": tp, "fp": fp, "fn": fn, "images": len(samples)}


def _footprint_share(s: Sample, area) -> float:
    """Share of a georeferenced sample's footprint inside ``area`` (a shapely geometry in EPSG:4326)."""
    import geopandas as gpd
    from shapely.geometry import box

    h, w = s.labels.shape
    x0, y0 = s.transform * (0, 0)
    x1, y1 = s.transform * (w, h)
    fp = gpd.GeoSeries([box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))], crs=s.crs).to_crs("EPSG:4326").iloc[0]
    return fp.intersection(area).area / fp.area if fp.area > 0 else 0.0


def labelled_places(scenes: list[str], labels: list[str], pixel_size: float, place_size: float,
                    area: list[str] | None = None, min_share: float = 0.5) -> list[Sample]:
    """The places of ``scenes`` that lie in the labelled area (at least ``min_share`` of each), as samples."""
    gdf = read_labels(labels, "adapt: --labels")
    # OSM outlines are not always valid polygons (self-touching rings): the hull and the union are taken
    # over valid versions, so one bad outline does not stop the run
    if area:
        region = shapely.union_all(shapely.make_valid(read_labels(area, "adapt: --area").geometry.values))
    else:
        region = shapely.GeometryCollection(list(gdf.geometry.values)).convex_hull
    samples = load_places_dataset(scenes, gdf, pixel_size, place_size)
    kept = [s for s in samples if _footprint_share(s, region) >= min_share]
    if not kept:
        raise InputError(f"adapt: the labels ({', '.join(labels)}) do not overlap the scenes ({', '.join(scenes)}): no place of "
                         f"the {len(samples)} has half its area in the labelled area; check that labels and imagery "
                         "show the same town (their CRSs are read from the files)")
    if not any(s.labels.any() for s in kept):
        raise InputError(f"adapt: no labelled building falls on the scenes ({', '.join(scenes)}); the labels "
                         f"({', '.join(labels)}) cover another area")
    _log(f"{len(kept)} places in the labelled area ({len(samples) - len(kept)} outside left out), "
         f"{sum(len(np.unique(s.labels)) - 1 for s in kept)} buildings")
    return kept


def _subset_places(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """``fraction`` of the places of ``samples`` (at least one), chosen with ``seed``."""
    if fraction >= 1:
        return samples
    places = sorted({place_of(s.name) for s in samples})
    k = max(1, int(math.ceil(fraction * len(places))))
    chosen = {places[i] for i in np.random.default_rng(seed + 1).permutation(len(places))[:k]}
    return [s for s in samples if place_of(s.name) in chosen]


def _train_config(base: str, md: dict, out: Path, minutes: float, epochs: int | None, n_train: int, seed: int,
                  threads: int | None, hard_share: float, min_side: int = 192) -> TrainConfig:
    """The fine-tuning recipe: the base's own network, GSD and post-processing; a short, low learning-rate
    cycle over ``minutes``; the colour jitter the shipped building model was trained with (another camera,
    another season); at least ~64 crops per epoch so that tiny label sets still checkpoint every minute or so.
    The learning-rate cycle spans whichever budget ends first, ``minutes`` or ``epochs``. Crops are 192 px, or
    the median image's shorter side (a multiple of 32, at least 64) when the images are smaller (review windows):
    a crop larger than its image is mostly padding, and costs the same."""
    crop = max(64, min(192, 32 * (min_side // 32)))
    aug = md.get("training", {}).get("augment")
    return TrainConfig(
        data=DataConfig(kind="geotiff"), model={k: md[k] for k in ("architecture", "encoder", "in_channels")},
        out=str(out), init_from=base, classes=md.get("classes", ["object"]), epochs=epochs or NO_EPOCH_CAP,
        schedule="time", max_minutes=minutes, batch_size=8, crop=crop, crops_per_image=max(4, math.ceil(64 / max(1, n_train))),
        scale=(0.7, 1.4), lr=5e-4, contact_weight=md.get("training", {}).get("contact_weight", 3.0), val_fraction=0.0,
        seed=seed, threads=threads, pixel_size=tuple(md["pixel_size"]) if md.get("pixel_size") else None,
        receptive_field_px=md.get("receptive_field_px", 256), postprocess=dict(md["postprocess"]), postprocess_grid={},
        resume=True, augment=AugmentConfig(**aug) if aug else AugmentConfig(color_p=0.5),
        hard_negatives=HardNegativeConfig(share=hard_share))


def _check_budget(minutes: float, epochs: int | None) -> None:
    if minutes <= 0:
        raise ParameterError(f"adapt: --minutes {minutes}: expected a positive number of minutes, e.g. 10")
    if epochs is not None and epochs < 1:
        raise ParameterError(f"adapt: --epochs {epochs}: expected at least 1 epoch (or leave it out: --minutes decides)")


def _check_request(out: Path, request: dict[str, Any]) -> dict[str, Any]:
    """The earlier record of this run folder (a resumed run), or {} for a new one; another request's folder
    is refused (its state would be continued on other data)."""
    rec = out / "adapt.json"
    if not rec.is_file():
        return {}
    old = json.loads(rec.read_text())
    if old.get("request") != request:
        diff = sorted(k for k in request if old.get("request", {}).get(k) != request[k])
        raise ParameterError(f"adapt: --out {out} holds an adapt run with other settings ({', '.join(diff)}); "
                             "pass another --out, or delete that folder to start over")
    return old


def adapt_samples(train_s: list[Sample], hold_s: list[Sample], base: str, out: str | Path, request: dict[str, Any],
                  minutes: float = 10.0, seed: int = 0, threads: int | None = None, hard_negatives: float = 0.0,
                  data_note: str = "", epochs: int | None = None) -> dict[str, Any]:
    """Score ``base`` on the hold-out (and the training samples), fine-tune it on ``train_s`` for ``minutes``
    (resumable), score the result, write ``OUT/<OUT name>`` with its card. Returns the record of ``OUT/adapt.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rec = _check_request(out, request)
    md = load_metadata(base)
    post = dict(md["postprocess"])
    if not train_s:
        raise InputError("adapt: no place left to train on; give more labelled imagery or a smaller --holdout")
    if not hold_s:
        raise InputError("adapt: no place left to hold out (one labelled place only?); give more labelled imagery, "
                         "or a --holdout above 0")
    if "before" not in rec:
        _log(f"scoring {Path(base).name} on {len(hold_s)} held-out and {len(train_s)} training images ...")
        rec = {"request": request, "before": {"held_out": score_samples(base, hold_s, post, threads),
                                              "trained": score_samples(base, train_s, post, threads)}}
        (out / "adapt.json").write_text(json.dumps(rec, indent=2) + "\n")
    b = rec["before"]["held_out"]
    _log(f"before: held-out F1 {b['f1']:.3f} (precision {b['precision']:.3f}, recall {b['recall']:.3f}; "
         f"TP {b['tp']}, FP {b['fp']}, FN {b['fn']})")
    cfg = _train_config(base, md, out, minutes, epochs, len(train_s), seed, threads, hard_negatives,
                        int(np.median([min(s.labels.shape) for s in train_s])))
    _log(f"fine-tuning {Path(base).name} on {len(train_s)} images for {minutes:g} min (state saved every epoch: "
         "run the same command again to continue)")
    summary = train(cfg, samples=(train_s, []))
    ckpt = str(run_checkpoint(out))
    after = {"held_out": score_samples(ckpt, hold_s, post, threads), "trained": score_samples(ckpt, train_s, post, threads)}
    a = after["held_out"]
    _log(f"after:  held-out F1 {a['f1']:.3f} (precision {a['precision']:.3f}, recall {a['recall']:.3f}; "
         f"TP {a['tp']}, FP {a['fp']}, FN {a['fn']})")
    # The hold-out is the only fair judge here: say plainly when the local model is no better than its base
    # (a strong base and a handful of windows: measured on the two-country building model, docs/MODEL.md)
    rec["better_than_base"] = a["f1"] > b["f1"]
    if not rec["better_than_base"]:
        _log(f"warning: the adapted model is not better than {Path(base).name} on the held-out images (F1 {b['f1']:.3f} "
             f"-> {a['f1']:.3f}): keep using the base, or label more places and run again")
    rec.update(after=after, epochs=summary["history"][-1]["epoch"] if summary["history"] else 0,
               train_images=sorted(s.name for s in train_s), held_out_images=sorted(s.name for s in hold_s),
               base=str(base), checkpoint=ckpt)
    card = write_card(ckpt, rec, data_note)
    rec["card"] = str(card)
    (out / "adapt.json").write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def adapt(scenes: list[str], labels: list[str], out: str | Path, model: str = "buildings", minutes: float = 10.0,
          holdout: float = 0.2, train_fraction: float = 1.0, seed: int = 0, place_size: float = WEB_MERCATOR_Z19,
          area: list[str] | None = None, threads: int | None = None, hard_negatives: float = 0.0,
          epochs: int | None = None) -> dict[str, Any]:
    """Fine-tune ``model`` on ``scenes`` with local ``labels``; see the module docstring."""
    if not 0 < holdout < 1:
        raise ParameterError(f"adapt: --holdout {holdout}: expected a share of the places in (0, 1), e.g. 0.2")
    if not 0 < train_fraction <= 1:
        raise ParameterError(f"adapt: --train-fraction {train_fraction}: expected a share in (0, 1], e.g. 0.25")
    _check_budget(minutes, epochs)
    base = resolve_model_spec(model, "--model")
    if base == "classical":
        raise ParameterError("adapt: --model classical has no weights to fine-tune; pass buildings or a checkpoint")
    md = load_metadata(base)
    if not md.get("pixel_size") or md["pixel_size"][1] != "m":
        raise ParameterError(f"adapt: --model {model}: its checkpoint has no ground pixel size in metres (an aerial "
                             "model records pixel_size: [0.15, m]); pass buildings or a checkpoint trained on aerial imagery")
    request = {"scenes": [str(Path(s).resolve()) for s in scenes], "labels": [str(Path(p).resolve()) for p in labels],
               "model": str(checkpoint_paths(base)[0]), "holdout": holdout, "train_fraction": train_fraction, "seed": seed,
               "place_size": place_size, "area": [str(Path(p).resolve()) for p in area or []],
               "hard_negatives": hard_negatives}
    _check_request(Path(out), request)
    samples = labelled_places(scenes, labels, float(md["pixel_size"][0]), place_size, area)
    train_all, hold_s = split_by_place(samples, holdout, seed)
    train_s = _subset_places(train_all, train_fraction, seed)
    n_places = len({place_of(s.name) for s in train_s})
    _log(f"hold-out: {len({place_of(s.name) for s in hold_s})} places; training: {n_places} of "
         f"{len({place_of(s.name) for s in train_all})} places ({train_fraction:.0%})")
    names = [Path(s).name for s in scenes]
    shown = ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]}, … {names[-1]}"
    note = f"{len(names)} scene(s) ({shown}); labels: {', '.join(Path(p).name for p in labels)}"
    return adapt_samples(train_s, hold_s, base, out, request, minutes, seed, threads, hard_negatives, note, epochs)


def adapt_from_review(folder: str | Path, out: str | Path, model: str | None = None, minutes: float = 10.0,
                      holdout: float = 0.2, seed: int = 0, threads: int | None = None, epochs: int | None = None
                      ) -> dict[str, Any]:
    """Fine-tune on the windows of an edited review package (:mod:`.review`): the edited outlines are the truth
    there, everything else in a window background. ``holdout`` of the windows (seeded) are not trained on;
    before/after figures are given for both. ``model``: the base (default: the model of the reviewed run)."""
    if not 0 < holdout < 1:
        raise ParameterError(f"adapt: --holdout {holdout}: expected a share of the windows in (0, 1), e.g. 0.2")
    _check_budget(minutes, epochs)
    folder = Path(folder)
    if not (folder / "review.json").is_file():
        raise InputError(f"adapt --from-review {folder}: no review.json there; pass the folder written by seamline review")
    rec = json.loads((folder / "review.json").read_text())
    base = resolve_model_spec(model or rec.get("model") or "buildings", "--model")
    if base == "classical":
        raise ParameterError("adapt: the reviewed run used the classical model, which has no weights to fine-tune; "
                             "pass --model buildings or a checkpoint")
    md = load_metadata(base)
    px = md.get("pixel_size")
    samples, _ = review_samples(folder, float(px[0]) if px and px[1] == "m" else None, int(md["in_channels"]))
    train_s, hold_s = split_by_place(samples, holdout, seed)
    request = {"review": str(folder.resolve()), "truth_sha256": truth_digest(folder), "model": str(checkpoint_paths(base)[0]),
               "holdout": holdout, "seed": seed}
    _log(f"{len(samples)} reviewed windows: {len(train_s)} to train on, {len(hold_s)} held out")
    note = f"the corrected windows of the review package {folder.name} (scene {Path(rec['scene']).name})"
    return adapt_samples(train_s, hold_s, base, out, request, minutes, seed, threads, 0.0, note, epochs)
