"""H&E nuclei models side by side on H&E they were not trained on (issue #20).

Held-out sets:

* ``consep_test``: CoNSeP's 14 test tiles (224 patches of 256², 10,330 nuclei; Apache-2.0), never trained or
  validated on (training splits CoNSeP's train tiles only);
* ``dsb_he``: all 75 DSB2018 ``he_color`` images (CC0) — other organs, labs and scanners, no pixel size. The
  H&E models never saw DSB2018; the shipped fluorescence model trained on 64 of them (its row is
  optimistic there);
* ``dsb_he_at_model_scale``: the same 75 images, each first resized so that its median nucleus (equivalent
  diameter of the truth) is the model's ``object_diameter_px`` — what ``seamline segment`` does with a known
  pixel size (the goal's slides have one), here with the scale taken from the truth; shrinking only, as the
  pipeline (bilinear with anti-aliasing; the labels come back to the image's grid by nearest neighbour). It
  separates stain from scale: DSB2018's H&E nuclei are 12–60 px across, CoNSeP's 16;
* with ``--dsb-all``, every DSB2018 modality (fluorescence, brightfield grey, other colour) as well, native.

Each image is treated as a scene, as ``seamline segment`` treats it: the checkpoint's own input
(:func:`pipeline.training.consep.brightfield_input`: percentile normalisation over the image for ``bands``
models, the fixed normalisation and stain transform of ``rgb``/``hematoxylin`` models), the whole image in
one forward pass at its native scale, the checkpoint's post-processing. Counts are summed over images:
AP@0.5 = TP / (TP + FP + FN), F1@0.5, PQ = sum of matched IoUs / (TP + FP/2 + FN/2) (HoVer-Net's). A model with
class heads also gets per-class F1 on ``consep_test`` (matching within each class, as ``seamline evaluate``
does), over CoNSeP's four groups.

Run: python bench/he_candidates.py NAME=CHECKPOINT [NAME=CHECKPOINT ...] [--out docs/bench/he_candidates.json]
     (``--only-dsb-he``: only the DSB2018 H&E sets, e.g. to add them to an earlier table)
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from pipeline.bench import machine_info
from pipeline.evaluation.metrics import match_labels
from pipeline.models.learned import LearnedModel
from pipeline.models.registry import resolve_model_spec
from pipeline.training.consep import GROUP_NAMES, brightfield_input, load_consep

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _dsb(modalities: set[str]) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(id, modality, RGB transmission (3, H, W), labels) of the DSB2018 images of ``modalities``."""
    import tifffile
    from PIL import Image

    root = DATA / "dsb2018"
    out = []
    with (root / "manifest.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row["modality"] in modalities:
                rgb = np.asarray(Image.open(root / "images" / f"{row['id']}.png").convert("RGB"))
                lab = tifffile.imread(root / "labels" / f"{row['id']}.tif").astype(np.int32)
                out.append((row["id"], row["modality"], np.moveaxis(rgb, -1, 0).astype(np.float32) / 255, lab))
    return out


class Tally:
    """Counts at IoU 0.5 summed over images: TP, FP, FN and the matched IoUs (for PQ)."""

    def __init__(self):
        self.tp = self.fp = self.fn = self.images = 0
        self.sum_iou = 0.0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        s = match_labels(gt, pred, (0.5,)).stats()["per_threshold"][0]
        self.tp, self.fp, self.fn = self.tp + s.tp, self.fp + s.fp, self.fn + s.fn
        self.sum_iou += s.sum_iou
        self.images += 1

    def as_dict(self) -> dict:
        d = self.tp + self.fp + self.fn
        return {"ap50": round(self.tp / max(1, d), 4), "f1": round(2 * self.tp / max(1, d + self.tp), 4),
                "pq": round(self.sum_iou / max(1e-9, self.tp + 0.5 * (self.fp + self.fn)), 4),
                "sq": round(self.sum_iou / max(1, self.tp), 4), "tp": self.tp, "fp": self.fp, "fn": self.fn,
                "images": self.images}


def _classes_of(pred: np.ndarray, heads: np.ndarray) -> dict[int, int]:
    """Each predicted object's class: the class head with the largest sum over its pixels (as the pipeline)."""
    ids = np.unique(pred)
    ids = ids[ids > 0]
    sums = np.stack([np.bincount(pred.ravel(), weights=h.ravel(), minlength=int(pred.max()) + 1)[ids] for h in heads[3:]], 1)
    return dict(zip(ids.tolist(), sums.argmax(1).tolist()))


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter (px) of the objects of a label image."""
    _, counts = np.unique(labels[labels > 0], return_counts=True)
    return float(np.median(np.sqrt(4 * counts / np.pi))) if counts.size else float("nan")


def _predict(model: LearnedModel, rgb: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and heads on the image's own grid; ``scale`` < 1: run on the image shrunk by it."""
    from skimage.transform import resize

    if scale < 1.0:
        h, w = rgb.shape[1:]
        small = resize(rgb, (3, max(32, round(h * scale)), max(32, round(w * scale))), order=1, anti_aliasing=True)
        heads = model.predict_heads(brightfield_input(small.astype(np.float32), model.input, model.in_channels)[None])[0]
        pred, _ = model.instances(heads)
        return (resize(pred, (h, w), order=0, preserve_range=True, anti_aliasing=False).astype(np.int32),
                resize(heads, (heads.shape[0], h, w), order=1))
    heads = model.predict_heads(brightfield_input(rgb, model.input, model.in_channels)[None])[0]
    return model.instances(heads)[0], heads


def evaluate(model: LearnedModel, images, classes: list[str] | None = None, at_model_scale: bool = False) -> dict:
    """Scores of ``model`` over ``images`` ((name, group, transmission, labels, label classes or None)), per
    group and overall; per class when the model and the data both have them. ``at_model_scale``: each image
    shrunk so that its median nucleus is the model's nominal size first (never enlarged)."""
    tallies: dict[str, Tally] = {}
    per_class = {c: Tally() for c in (classes or [])}
    px, t0 = 0, time.perf_counter()
    nominal = float(model.meta.get("object_diameter_px") or 0)
    for name, group, rgb, lab, lab_cls in images:
        f = min(1.0, nominal / median_diameter(lab)) if at_model_scale and nominal else 1.0
        pred, heads = _predict(model, rgb, f if f < 0.85 else 1.0)
        px += lab.size
        for key in ("all", group):
            tallies.setdefault(key, Tally()).add(lab, pred)
        if per_class and lab_cls is not None and heads.shape[0] > 3:
            pc = _classes_of(pred, heads)
            pred_cls = np.full(int(pred.max()) + 1, -1)
            for i, c in pc.items():
                pred_cls[i] = c
            for k, c in enumerate(classes):
                g = np.where(lab_cls[lab] == k, lab, 0)
                p = np.where(pred_cls[pred] == k, pred, 0)
                per_class[c].add(g, p)
    out = {k: v.as_dict() for k, v in sorted(tallies.items())}
    if per_class and any(t.images for t in per_class.values()):
        out["per_class"] = {c: {k: v for k, v in t.as_dict().items() if k in ("f1", "tp", "fp", "fn")} for c, t in per_class.items()}
    out["mpx_s"] = round(px / 1e6 / max(1e-9, time.perf_counter() - t0), 3)
    return out


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=CHECKPOINT (a path, or default)")
    ap.add_argument("--out", default="docs/bench/he_candidates.json")
    ap.add_argument("--dsb-all", action="store_true", help="every DSB2018 modality, not only he_color")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only-dsb-he", action="store_true", help="skip CoNSeP test (DSB2018 he_color only)")
    a = ap.parse_args()
    consep = [] if a.only_dsb_he else load_consep(DATA / "he_consep", "test", classes=GROUP_NAMES)
    consep_images = [(s.name, "consep_test", s.raw, s.labels, s.instance_classes) for s in consep]
    dsb = [(i, m, rgb, lab, None) for i, m, rgb, lab in _dsb({"he_color", "fluor", "bright_gray", "color_other"}
                                                                  if a.dsb_all else {"he_color"})]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res: dict = {"machine": machine_info(), "commit": commit, "sets": {
        "consep_test": f"{len(consep)} CoNSeP test patches (14 tiles), {sum(int(s.labels.max() > 0) for s in consep)} with nuclei",
        "dsb": f"{len(dsb)} DSB2018 images (" + ", ".join(sorted({m for _, m, *_ in dsb})) + ")"}, "models": {}}
    for spec in a.models:
        name, _, path = spec.partition("=")
        path = resolve_model_spec(path or name)
        model = LearnedModel(path, device="auto", threads=a.threads)
        classes = [c for c in model.classes if c in GROUP_NAMES] if len(model.classes) > 1 else None
        r = {"checkpoint": path, "input": model.input, "classes": model.classes,
             "consep_test": evaluate(model, consep_images, classes), "dsb": evaluate(model, dsb),
             "dsb_he_at_model_scale": evaluate(model, [d for d in dsb if d[1] == "he_color"], at_model_scale=True)}
        res["models"][name] = r
        ct, dh, ds = r["consep_test"].get("all", {}), r["dsb"].get("he_color", {}), r["dsb_he_at_model_scale"]["all"]
        print(f"{name}: CoNSeP test AP50 {ct.get('ap50', 0):.3f} F1 {ct.get('f1', 0):.3f} PQ {ct.get('pq', 0):.3f} | DSB he_color "
              f"AP50 {dh.get('ap50', 0):.3f} F1 {dh.get('f1', 0):.3f} PQ {dh.get('pq', 0):.3f} | at model scale "
              f"F1 {ds['f1']:.3f} PQ {ds['pq']:.3f}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
