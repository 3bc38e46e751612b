"""Modality detection (pipeline/stages/modality.py) on every real image with a known modality.

Each file is opened as ``seamline segment`` opens it (:func:`pipeline.io.sources.open_source`) and judged on
its overview (:func:`pipeline.stages.inputs.overview`): the real slides, all 531 DSB2018 images (against
their manifest's modality) and CoNSeP's 656 H&E patches. Writes the confusion tables, the signals' ranges
per group and every image the detection disagrees with.

Run: python bench/modality_check.py [--out docs/bench/modality.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.bench import machine_info
from pipeline.io.sources import open_source
from pipeline.stages.inputs import overview
from pipeline.stages.modality import detect_modality

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
#: What each group should be detected as (modality, stain).
EXPECTED = {"fluor": ("fluorescence", None), "he_color": ("brightfield", "he"), "bright_gray": ("brightfield", "grey"),
            "color_other": ("brightfield", None), "consep": ("brightfield", "he")}
SLIDES = {"CMU-1-Small-Region.svs": ("brightfield", "he"), "test3-DAPI-2-387.ndpi": ("fluorescence", None)}


def judge(path: Path):
    with open_source(str(path)) as src:
        ov, mask, _ = overview(src)
        return detect_modality(ov, mask, georeferenced=src.crs_wkt is not None)


def _label(m) -> str:
    return m.modality + (f"/{m.stain}" if m.stain else "")


def _ok(m, expected: tuple[str, str | None]) -> bool:
    return m.modality == expected[0] and (expected[1] is None or m.stain == expected[1])


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/bench/modality.json")
    a = ap.parse_args()
    groups: dict[str, list[tuple[str, object]]] = {}
    with (DATA / "dsb2018" / "manifest.csv").open() as fh:
        for row in csv.DictReader(fh):
            groups.setdefault(row["modality"], []).append((row["id"], judge(DATA / "dsb2018" / "images" / f"{row['id']}.png")))
    for p in sorted((DATA / "he_consep" / "images").glob("*/*.jpg")):
        groups.setdefault("consep", []).append((p.stem, judge(p)))
    slides = {}
    for name, exp in SLIDES.items():
        m = judge(DATA / "slides" / name)
        slides[name] = {**m.as_dict(), "expected": "/".join(x for x in exp if x), "right": _ok(m, exp)}
    res: dict = {"machine": machine_info(),
                 "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
                 "slides": slides, "confusion": {}, "right": {}, "signals": {}, "disagreements": {}}
    for g, items in groups.items():
        res["confusion"][g] = dict(Counter(_label(m) for _, m in items).most_common())
        res["right"][g] = f"{sum(_ok(m, EXPECTED[g]) for _, m in items)}/{len(items)}"
        keys = sorted({k for _, m in items for k in m.signals})
        res["signals"][g] = {k: [round(float(q), 3) for q in np.percentile([m.signals.get(k, np.nan) for _, m in items], [0, 5, 50, 95, 100])]
                             for k in keys if k != "channels"}
        res["disagreements"][g] = [{"image": n, **m.as_dict()} for n, m in items if not _ok(m, EXPECTED[g])]
    for name, s in slides.items():
        print(f"{name}: {s['modality']}/{s['stain']} ({s['reason']})")
    for g in groups:
        print(f"{g}: {res['right'][g]} as expected; {res['confusion'][g]}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
