"""``seamline train``: train the instance heads end to end and keep the best checkpoint.

Losses: foreground BCE + soft Dice, boundary BCE (positives up-weighted: they are thin), distance BCE on the
normalised per-object distance; every BCE term weighted per pixel by :func:`~.data.contact_weights`, which
stresses the band between touching objects (``contact_weight``). Validation runs the full inference path
(heads → marker watershed) on whole validation images and reports AP at IoU 0.5 per modality, every
``val_every`` epochs. The best validated epoch by overall AP@0.5 is saved (safetensors + JSON); a multi-class
model (several ``classes``: one more head per class, trained on the object pixels) by AP@0.5 times the share
of validation objects it names right.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.errors import ConfigError
from pipeline.models.checkpoint import load_metadata, load_state_dict, save_checkpoint
from pipeline.models.network import HEADS, build_network
from pipeline.models.registry import resolve_model_spec
from pipeline.training.boxloss import BoxAugmenter, box_losses, ellipse_labels
from pipeline.training.config import TrainConfig
from pipeline.training.data import Augmenter, class_head_loss, load_samples, source_weights, split_samples
from pipeline.training.domain import domain_record, store_record
from pipeline.training.hardneg import mine_hard_negatives
from pipeline.training.resume import load_state, save_state
from pipeline.training.samples import Sample
from pipeline.training.tune import best_postprocess

__all__ = ["train", "validate", "NO_EPOCH_CAP"]

# An epoch cap that is no cap (seamline adapt without --epochs): the time budget ends training, and the
# progress line counts epochs without "/N"
NO_EPOCH_CAP = 100_000


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _losses(logits, target, weight=None, pos_weight_boundary: float = 4.0):
    """Sum of the head losses; ``weight`` (N, H, W) weights each pixel's BCE terms (normalised by its sum)."""
    import torch
    import torch.nn.functional as F

    fg_l, bnd_l, dist_l = logits[:, 0], logits[:, 1], logits[:, 2]
    fg_t, bnd_t, dist_t = target[:, 0], target[:, 1], target[:, 2]
    if weight is None:
        weight = torch.ones_like(fg_t)
    wsum = weight.sum()

    def bce(x, t, **kw):
        return (F.binary_cross_entropy_with_logits(x, t, reduction="none", **kw) * weight).sum() / wsum

    p = torch.sigmoid(fg_l)
    inter = (p * fg_t).sum((1, 2))
    dice = 1 - ((2 * inter + 1) / (p.sum((1, 2)) + fg_t.sum((1, 2)) + 1)).mean()
    pos_w = torch.tensor(pos_weight_boundary, device=logits.device)
    loss = bce(fg_l, fg_t) + dice + bce(bnd_l, bnd_t, pos_weight=pos_w) + 2.0 * bce(dist_l, dist_t)
    if logits.shape[1] > 3:  # class heads: on object pixels only (background has no class)
        loss = loss + class_head_loss(logits[:, 3:], target[:, 3:], fg_t)
    return loss


def class_accuracy(heads: list[np.ndarray], samples: list[Sample]) -> float | None:
    """Share of the validation objects whose most probable class (class heads summed over the object's true
    pixels — for box samples, over each counted box's core) is their own: how well a multi-class model names
    what it finds, apart from finding it."""
    right = total = 0
    for h, s in zip(heads, samples):
        if h.shape[0] <= 3 or s.instance_classes is None:
            continue
        if s.boxes is not None:  # box samples: the core of each box stands for its object
            regions = ellipse_labels(s.boxes.astype(np.float64), s.image.shape[1:], shrink=0.5)
        else:
            regions = s.labels
        # labels index the whole label file's polygons, not only this image's: size by the class map
        n = len(s.instance_classes)
        sums = np.stack([np.bincount(regions.ravel(), weights=c.ravel(), minlength=n) for c in h[3:]], axis=1)
        present = np.bincount(regions.ravel(), minlength=n) > 0
        present[0] = False
        if s.boxes is not None and s.box_counted is not None:
            present[1:] &= s.box_counted
        right += int((sums[present].argmax(axis=1) == s.instance_classes[present]).sum())
        total += int(present.sum())
    return round(right / total, 4) if total else None


def validate(model_fn, samples: list[Sample], post: dict[str, Any], grid: dict[str, list] | None = None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Heads once per validation image, then the watershed for each setting of ``grid`` over ``post``.

    Returns the best setting by overall AP@0.5 (TP / (TP + FP + FN), counts summed over images) and its
    scores, overall and per modality. The thresholds that suit a network change as it learns (once the
    boundary head knows the contacts, lower marker thresholds split what the distance head merges), so each
    checkpoint is judged, and kept, with its own.
    """
    heads = [model_fn(s.image[None])[0] for s in samples]
    best, scores = best_postprocess(heads, samples, post, grid or {})
    acc = class_accuracy(heads, samples)
    if acc is not None:
        scores = {**scores, "all": {**scores.get("all", {}), "class_accuracy": acc}}
    return best, scores


def _input_meta(kind: str) -> dict[str, Any]:
    """The checkpoint's ``normalization`` and, for brightfield inputs, ``input`` (pipeline/models/stain.py)."""
    if kind == "bands":
        return {"normalization": {"method": "percentile", "low": 1.0, "high": 99.8, "per": "scene, per band"}}
    return {"input": kind, "normalization": {"method": "fixed", "white": 255.0,
                                             "per": "brightfield transmission: 0 -> 0, white -> 1, every scene alike"}}


def run_checkpoint(out: str | Path) -> Path:
    """The checkpoint stem of a training run folder: ``OUT/<folder name>`` (``.safetensors``, ``.json``)."""
    out = Path(out)
    return out / out.name


def train(cfg: TrainConfig, samples: tuple[list[Sample], list[Sample]] | None = None) -> dict[str, Any]:
    """Train ``cfg``; ``samples``: (training, validation) samples made by the caller (``seamline adapt``)
    instead of those of ``cfg.data``. With ``cfg.resume`` the whole state is saved after every epoch and a
    later call continues from it (:mod:`pipeline.training.resume`)."""
    import torch

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = "cuda" if (cfg.device == "auto" and torch.cuda.is_available()) else ("cpu" if cfg.device == "auto" else cfg.device)
    arch = cfg.model.model_dump()
    ckpt = run_checkpoint(cfg.out)
    init_from = None
    if cfg.init_from:
        init_from = resolve_model_spec(cfg.init_from, "init_from")  # 'default' → the shipped model; checks both files exist
        if init_from == "classical":
            raise ConfigError("init_from: 'classical' has no weights; pass 'default' or a checkpoint path")
        # Fine-tuning keeps the starting checkpoint's network: its architecture overrides the config's.
        arch = {k: load_metadata(init_from)[k] for k in arch}
    n_classes = len(cfg.classes)
    if n_classes > 1:  # one class head per class after the three instance heads
        arch["heads"] = [*HEADS, *(f"class:{c}" for c in cfg.classes)]
    in_ch = arch["in_channels"]
    if samples is None:
        loaded = load_samples(cfg.data, in_ch, cfg.pixel_size[0] if cfg.pixel_size else None, cfg.classes, cfg.input)
        train_s, val_s = split_samples(loaded, cfg.data, cfg.val_fraction, cfg.seed)
    else:
        train_s, val_s = samples
    boxes = cfg.data.kind == "boxes"
    _log(f"data: {len(train_s)} training, {len(val_s)} validation images ({cfg.data.kind})")
    net = build_network(arch)
    if init_from:
        state = load_state_dict(init_from)
        own = net.state_dict()
        for k, v in list(state.items()):
            if k in own and own[k].shape != v.shape and own[k].shape[1:] == v.shape[1:] and own[k].shape[0] > v.shape[0]:
                # more heads than the starting checkpoint (class heads added): keep its heads, new ones start fresh
                grown = own[k].clone()
                grown[: v.shape[0]] = v
                state[k] = grown
        net.load_state_dict(state)
        _log(f"initialised from {init_from} ({arch['architecture']}, {arch['encoder']})")
    # Channels-last runs the MobileNet/ResNet convolutions about 1.4x faster on a CPU (measured: 5.6 vs
    # 4.1 images/s); on CUDA, mixed precision does the work.
    fmt = torch.channels_last if device == "cpu" else torch.contiguous_format
    net = net.to(device, memory_format=fmt)
    history = []
    best = -1.0
    best_epoch = -1
    t_start = time.perf_counter()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps_per_epoch = max(1, (len(train_s) * cfg.crops_per_image) // cfg.batch_size)
    if cfg.schedule == "time":
        # One cycle over the time budget, not the step count: on a CPU shared with other work the number of
        # steps that fit in max_minutes is unknown, and a step-based cycle cut short never anneals. Whichever
        # ends first, the time or the epochs, ends the cycle (on a quiet machine the epochs may run out first).
        import math

        total_steps = cfg.epochs * steps_per_epoch

        def _factor(step: int) -> float:
            f = min(1.0, max((time.perf_counter() - t_start) / 60 / cfg.max_minutes, step / total_steps))
            return max(0.04, f / 0.1) if f < 0.1 else 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (f - 0.1) / 0.9))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, _factor)
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1)
    scaler = torch.amp.GradScaler(enabled=device == "cuda")
    if boxes:  # box-supervised: projection loss + background outside the boxes (training/boxloss.py)
        aug = BoxAugmenter(cfg.crop, cfg.seed, scale=tuple(cfg.scale), mode=cfg.box_supervision, n_classes=n_classes,
                          augment=cfg.augment)
    else:
        aug = Augmenter(cfg.crop, cfg.seed, scale=tuple(cfg.scale), contact_weight=cfg.contact_weight, augment=cfg.augment,
                        n_classes=n_classes, input_kind=cfg.input, in_channels=in_ch, hard_share=cfg.hard_negatives.share)
    rng = np.random.default_rng(cfg.seed)
    post = dict(cfg.postprocess)

    def model_fn(batch: np.ndarray) -> np.ndarray:
        net.eval()
        n, c, h, w = batch.shape
        ph, pw = (-h) % 32, (-w) % 32
        x = torch.from_numpy(np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect"))
        x = x.to(device).contiguous(memory_format=fmt)
        with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
            y = torch.sigmoid(net(x).float())
        return y[:, :, :h, :w].cpu().numpy()

    draw_weights = source_weights(train_s, cfg.source_balance)
    images_seen = 0
    train_time = 0.0
    hn = cfg.hard_negatives
    start_epoch, finished = 1, False
    if cfg.resume and (info := load_state(ckpt, net, opt, sched)) is not None:
        start_epoch = info["epoch"] + 1
        finished = info["epoch"] >= cfg.epochs or bool(cfg.max_minutes and info["minutes"] > cfg.max_minutes)
        best, best_epoch, history = info["best"], info["best_epoch"], info["history"]
        images_seen, train_time = info["images_seen"], info["train_time"]
        t_start = time.perf_counter() - 60 * info["minutes"]
        rng.bit_generator.state, aug.rng.bit_generator.state = info["rng"], info["aug_rng"]
        _log(f"resuming after epoch {info['epoch']} ({info['minutes']:.1f} min done)" + (": finished" if finished else ""))
    for epoch in range(start_epoch, 0 if finished else cfg.epochs + 1):
        if hn.share and not boxes and ((epoch - 1) % hn.every == 0 or epoch == start_epoch):
            mined = mine_hard_negatives(model_fn, train_s, hn.threshold, hn.margin_px, seed=cfg.seed + epoch)
            _log(f"hard negatives (epoch {epoch}): {mined['share_of_background']:.2%} of the background seen as objects, "
                 f"in {mined['samples_with_any']} of {len(train_s)} images")
        net.train()
        if cfg.source_balance > 0:
            order = rng.choice(len(train_s), size=len(train_s) * cfg.crops_per_image, p=draw_weights)
        else:
            order = np.concatenate([rng.permutation(len(train_s)) for _ in range(cfg.crops_per_image)])
        t0 = time.perf_counter()
        losses = []
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            crops = [aug(train_s[i]) for i in idx]
            x = torch.from_numpy(np.stack([c[0] for c in crops])).to(device).contiguous(memory_format=fmt)
            y = torch.from_numpy(np.stack([c[1] for c in crops])).to(device)
            with torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
                logits = net(x)
            if boxes and cfg.box_supervision == "projection":
                loss = box_losses(logits.float(), y, [c[2] for c in crops])
            else:
                loss = _losses(logits.float(), y, torch.from_numpy(np.stack([c[2] for c in crops])).to(device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(loss.item())
            images_seen += len(idx)
        dt = time.perf_counter() - t0
        train_time += dt
        out_of_time = bool(cfg.max_minutes) and (time.perf_counter() - t_start) / 60 > cfg.max_minutes
        due = epoch % cfg.val_every == 0 or epoch == cfg.epochs or out_of_time
        val: dict[str, Any] = {}
        if val_s and due:
            val_post, val = validate(model_fn, val_s, post, cfg.postprocess_grid)
        # no validation split, or keep: last: keep the last epoch (validation figures are then for information)
        ap = val.get("all", {}).get("ap50", 0.0) if (val_s and cfg.keep == "best") else float(epoch)
        if val.get("all", {}).get("class_accuracy") is not None:  # a multi-class model must also name its objects
            ap *= val["all"]["class_accuracy"]
        rec = {"epoch": epoch, "loss": float(np.mean(losses)), "val": val, "epoch_s": round(dt, 1),
               "images_per_s": round(len(order[: steps_per_epoch * cfg.batch_size]) / dt, 2),
               "lr": float(opt.param_groups[0]["lr"])}
        if val:
            rec["postprocess"] = {k: val_post[k] for k in cfg.postprocess_grid}
        history.append(rec)
        per_mod = " ".join(f"{k}={v['ap50']:.3f}" for k, v in val.items())
        if val.get("all", {}).get("class_accuracy") is not None:
            per_mod += f", class accuracy {val['all']['class_accuracy']:.3f}"
        if val and cfg.postprocess_grid:
            per_mod += " with " + ", ".join(f"{k} {v}" for k, v in rec["postprocess"].items())
        spent = f", {(time.perf_counter() - t_start) / 60:.1f} of {cfg.max_minutes:g} min" if cfg.max_minutes else ""
        of_epochs = "" if cfg.epochs >= NO_EPOCH_CAP else f"/{cfg.epochs}"
        _log(f"epoch {epoch}{of_epochs} loss {rec['loss']:.4f} val AP50 {per_mod or '-'} ({dt:.0f}s, {rec['images_per_s']} img/s{spent})")
        if (val or not val_s or cfg.keep == "last") and ap > best:
            best, best_epoch = ap, epoch
            meta = {
                **arch,
                "classes": cfg.classes,
                **({"pixel_size": list(cfg.pixel_size)} if cfg.pixel_size else {}),
                "postprocess": val_post if val else post,
                **_input_meta(cfg.input),
                "receptive_field_px": cfg.receptive_field_px,
                **({"object_diameter_px": cfg.object_diameter_px} if cfg.object_diameter_px else {}),
                **({"object_diameter_um": cfg.object_diameter_um} if cfg.object_diameter_um else {}),
                "training": {
                    "data": str(cfg.data.root or cfg.data.rasters) + (f" ({cfg.data.subset})" if cfg.data.kind == "consep" else ""),
                    "kind": cfg.data.kind,
                    **({"box_supervision": cfg.box_supervision, "boxes": [str(b) for b in cfg.data.boxes]} if boxes else {}),
                    **({"source_balance": cfg.source_balance} if cfg.source_balance else {}),
                    "score": "box F1 at box IoU 0.4" if boxes else "F1 and AP at mask IoU 0.5",
                    "train_images": len(train_s),
                    "val_images": len(val_s),
                    "val_names": sorted(s.name for s in val_s),
                    "epochs_run": epoch,
                    "seed": cfg.seed,
                    "crop": cfg.crop,
                    "batch_size": cfg.batch_size,
                    "lr": cfg.lr,
                    "schedule": cfg.schedule,
                    "minutes": round((time.perf_counter() - t_start) / 60, 1),
                    "contact_weight": cfg.contact_weight,
                    **({"hard_negatives": hn.model_dump()} if hn.share else {}),
                    "augment": cfg.augment.model_dump(),
                    "device": device,
                    "init_from": cfg.init_from,
                },
                "validation": val,
                "seamline_version": __version__,
            }
            if val and cfg.postprocess_grid:
                meta["postprocess_tuned_on"] = "validation split (figures slightly optimistic)"
            save_checkpoint(ckpt, net.state_dict(), meta)
            _log(f"  saved best checkpoint ({'AP50 x class accuracy' if n_classes > 1 else 'AP50'} {ap:.3f}) to {ckpt}" if val_s
                 else f"  saved the checkpoint of epoch {epoch} to {ckpt}")
        if cfg.resume:
            save_state(ckpt, net, opt, sched, {
                "epoch": epoch, "best": best, "best_epoch": best_epoch,
                "history": history, "images_seen": images_seen, "train_time": train_time,
                "minutes": (time.perf_counter() - t_start) / 60, "rng": rng.bit_generator.state,
                "aug_rng": aug.rng.bit_generator.state})
        if out_of_time:
            _log(f"stopping: time budget of {cfg.max_minutes} min reached after epoch {epoch}")
            break
    if best_epoch > 0:  # the training domain of the kept checkpoint, the reference of every run's quality verdict
        _log("recording the training domain (pipeline/training/domain.py) ...")
        store_record(str(cfg.out), domain_record(str(cfg.out), train_s + val_s, val_s))
    summary = {"best_epoch": best_epoch, "best_ap50": best, "history": history,
               "train_images_per_s": round(images_seen / max(train_time, 1e-9), 2), "device": device,
               "checkpoint": str(ckpt)}
    Path(str(ckpt) + ".history.json").write_text(json.dumps(summary, indent=1))
    return summary
