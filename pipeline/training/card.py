"""The card of a fine-tuned checkpoint: what it was made from and how it scored, in its JSON and in words.

A local model is passed around (to a colleague, into a QGIS project, back to the shipped models): its
figures and its data's credits must travel with the weights, not stay in a terminal. The JSON gets an
``adapt`` section (machines read it: ``seamline segment`` copies the model id into every run summary); a
``CARD.md`` beside the checkpoint says the same for people.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.models.checkpoint import checkpoint_paths, load_metadata

__all__ = ["write_card"]

_CREDITS = ("Imagery and labels keep their own licences: OpenStreetMap outlines are © OpenStreetMap contributors "
            "(ODbL 1.0), OpenAerialMap imagery is CC BY 4.0 (\"OpenAerialMap contributors\"). Credit the sources of "
            "your imagery and labels wherever you publish this model or its outputs.")


def _row(name: str, r: dict[str, Any]) -> str:
    return (f"| {name} | {r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['tp']} | {r['fp']} | {r['fn']} "
            f"| {r['images']} |")


def write_card(checkpoint: str, rec: dict[str, Any], data_note: str = "") -> Path:
    """Add ``rec``'s figures to ``checkpoint``'s JSON (key ``adapt``) and write ``CARD.md`` beside it."""
    _, meta_path = checkpoint_paths(checkpoint)
    md = load_metadata(checkpoint)
    base_md = load_metadata(rec["base"])
    md["adapt"] = {k: rec[k] for k in ("before", "after", "better_than_base", "train_images", "held_out_images", "epochs")
                   if k in rec}
    md["adapt"]["base"] = Path(rec["base"]).name
    md["adapt"]["request"] = rec["request"]
    md["adapt"]["score"] = "F1 at mask IoU 0.5 on the held-out images (never used to choose the checkpoint)"
    meta_path.write_text(json.dumps(md, indent=2, sort_keys=True) + "\n")
    before, after = rec["before"], rec["after"]
    base_credit = base_md.get("training", {}).get("data", "")
    if isinstance(base_credit, list):  # a training config's rasters: paths or patterns
        base_credit = ", ".join(map(str, base_credit))
    lines = [
        f"# {Path(checkpoint).parent.name}/{Path(checkpoint).name}: fine-tuned from `{Path(rec['base']).name}` by `seamline adapt`",
        "",
        f"Data: {data_note or 'see adapt.json'}. {len(rec['train_images'])} training images, "
        f"{len(rec['held_out_images'])} held-out images (whole places: none of them was trained on or chose the "
        f"checkpoint, which is the last of {rec.get('epochs', '?')} epochs). Ground pixel size "
        f"{md.get('pixel_size', ['?', ''])[0]} {md.get('pixel_size', ['', ''])[1]}.",
        "",
        "| model | F1 at IoU 0.5 | precision | recall | TP | FP | FN | images |",
        "|---|---|---|---|---|---|---|---|",
        _row("before (held-out)", before["held_out"]),
        _row("**after (held-out)**", after["held_out"]),
        _row("before (trained on)", before["trained"]),
        _row("after (trained on)", after["trained"]),
        "",
        (f"Use it: `seamline segment SCENE --config buildings --model {Path(checkpoint).parent}`."
         if rec["better_than_base"] else
         f"**Not better than its base on the held-out images: keep using `{Path(rec['base']).name}`**, or label more "
         "places and run `seamline adapt` again."),
        "",
        f"Base model `{Path(rec['base']).name}` was trained on: {base_credit} (docs/MODEL.md).",
        "",
        _CREDITS,
        "",
    ]
    card = Path(checkpoint).parent / "CARD.md"
    card.write_text("\n".join(lines))
    return card
