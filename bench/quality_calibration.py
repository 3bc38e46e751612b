"""Calibration of the quality verdict (issue #21): every shipped model run by the real runner on real files of its
own domain and of other fields, and the verdict with its signals written per run.

Groups (what the verdict should say):

* ``in`` — the model's own kind of image that it was not trained on: DSB2018 fluorescence validation images
  and the DAPI NDPI (nuclei); Kampala chips of the two held-out places and Banepa's southern row (buildings); the held-out
  bottom half of OSBS_029 and the YELL validation tiles (trees). Must be ``ok``.
* ``in-train`` — its own kind, seen in training (SOAP, SJER for trees; DSB2018 fluorescence training images).
  Should be ``ok``; not evidence of generalisation.
* ``rare`` — a modality the model saw little of and is weak on: H&E for the DSB2018 nuclei model (DSB2018
  H&E validation images, CoNSeP patches, the CMU-1 SVS). Must not be ``ok``.
* ``cross`` — another field: the nuclei model on aerial chips, the aerial models on fluorescence and H&E.
  Must not be ``ok``.

Each run is ``segment_scene`` with the model's usual config (configs/buildings.yaml, configs/trees.yaml;
defaults for nuclei), labels and reports off, all runs of one model on one LocalCluster. Crops of the large YELL
PNG are written to a temporary folder (as PNG, like the source).

    PYTHONPATH=$PWD nice -n 10 python bench/quality_calibration.py [--out docs/bench/quality_calibration.json] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PLACE_SIZE = 76.43702828517625  # configs/train_buildings.yaml


def _dsb(modality: str, split: str, n: int) -> list[Path]:
    """DSB2018 images of one manifest modality from the nuclei model's validation (or training) split."""
    md = json.loads((ROOT / "pipeline" / "weights" / "nuclei_unet_mbv2.json").read_text())
    val = set(md["training"]["val_names"])
    rows = list(csv.DictReader((DATA / "dsb2018" / "manifest.csv").open()))
    ids = sorted(r["id"] for r in rows if r["modality"] == modality and ((r["id"] in val) == (split == "val")))
    return [DATA / "dsb2018" / "images" / f"{i}.png" for i in ids[:n]]


def _kampala_held_out(n: int) -> list[Path]:
    """Kampala chips whose place (the training's place grid) the building model held out."""
    import rasterio

    md = json.loads((ROOT / "pipeline" / "weights" / "buildings_unet_mbv2.json").read_text())
    places = {v.split("@")[0] for v in md["training"]["val_names"]}
    out = []
    for p in sorted((DATA / "aerial" / "kampala_buildings" / "chips").glob("*.tif")):
        with rasterio.open(p) as ds:
            cx, cy = ds.xy(ds.height / 2, ds.width / 2)
        if f"p{int(np.floor(cx / PLACE_SIZE))}_{int(np.floor(cy / PLACE_SIZE))}" in places:
            out.append(p)
    return out[:: max(1, len(out) // n)][:n]


def _yell_val_tiles(folder: Path, n: int) -> list[Path]:
    """The tree model's YELL validation tiles (400 px, named in its JSON), cut from the PNG."""
    from PIL import Image

    md = json.loads((ROOT / "pipeline" / "weights" / "trees_unet_mbv2.json").read_text())
    img = np.asarray(Image.open(DATA / "aerial" / "neon_trees" / "2019_YELL_2_528000_4978000_image_crop2.png"))[..., :3]
    out = []
    for name in md["training"]["val_names"][:n]:
        y, x = (int(v) for v in name.split("@")[1].split("_"))
        p = folder / f"yell_{y}_{x}.png"
        Image.fromarray(np.ascontiguousarray(img[y : y + 400, x : x + 400])).save(p)
        out.append(p)
    return out


def cases(tmp: Path, quick: bool) -> list[tuple[str, str, Path]]:
    k = 2 if quick else 1
    consep = sorted((DATA / "he_consep" / "images" / "test").glob("*.jpg"))[:: 28 * k]
    banepa = sorted((DATA / "aerial" / "banepa_buildings" / "chips").glob("*.tif"))[:: 3 * k]
    kampala = _kampala_held_out(8 // k)
    osbs = ROOT / "configs" / "data" / "osbs_029_split" / "OSBS_029_bottom.vrt"
    ndpi, svs = DATA / "slides" / "test3-DAPI-2-387.ndpi", DATA / "slides" / "CMU-1-Small-Region.svs"
    yell = _yell_val_tiles(tmp, 9 // k)
    fluor_val, he_val = _dsb("fluor", "val", 20 // k), _dsb("he_color", "val", 11 // k)
    out = [("default", "in", p) for p in [*fluor_val, ndpi]]
    out += [("default", "in-train", p) for p in _dsb("fluor", "train", 6 // k)]
    out += [("default", "rare", p) for p in [*he_val, *consep, svs]]
    out += [("default", "cross", p) for p in [*kampala[:4], *banepa[:4], osbs, *yell[:3]]]
    # the two-country model (2026-12-05) trained on Banepa except its southern row of chips (y = 220245)
    out += [("buildings", "in", p) for p in [*kampala, *[b for b in banepa if "-220245-" in b.name]]]
    out += [("buildings", "in-train", p) for p in banepa if "-220245-" not in p.name]
    out += [("buildings", "cross", p) for p in [*fluor_val[:6], *he_val[:3], *consep[:4], ndpi, svs, *yell[:2]]]
    out += [("trees", "in", p) for p in [osbs, *yell]]
    out += [("trees", "in-train", p) for p in [DATA / "aerial" / "neon_trees" / "SOAP_061.png",
                                              DATA / "aerial" / "deepforest" / "2018_SJER_3_252000_4107000_image_477.tif"]]
    out += [("trees", "cross", p) for p in [*fluor_val[:6], *he_val[:3], *consep[:4], ndpi, svs]]
    return out


def config(model: str):
    import yaml

    from pipeline.config import SegmentConfig

    base = {"buildings": "configs/buildings.yaml", "trees": "configs/trees.yaml"}.get(model)
    extra = yaml.safe_load((ROOT / base).read_text()) if base else {}
    return SegmentConfig(**(extra | {"model": model, "report": False, "label_image": False, "qupath_geojson": False}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "quality_calibration.json"))
    ap.add_argument("--quick", action="store_true", help="about half the files")
    ap.add_argument("--models", nargs="*", default=["default", "buildings", "trees"])
    args = ap.parse_args()

    from pipeline.runner import segment_scene
    from pipeline.stages.dispatch import dask_client

    runs = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d, dask_client(workers=2, threads_per_worker=1) as client:
        tmp = Path(d)
        todo = [c for c in cases(tmp, args.quick) if c[0] in args.models]
        for i, (model, group, path) in enumerate(todo):
            t = time.perf_counter()
            rec = {"model": model, "group": group, "file": str(path.relative_to(DATA) if DATA in path.parents else path.name)}
            try:
                s = segment_scene(str(path), tmp / f"out{i}", config(model), client=client, force=True)
                q = s["quality"]
                rec.update(verdict=q["verdict"], reasons=q["reasons"], signals=q["signals"],
                           modality=s["stats"].get("domain", {}).get("modality"), objects=s["objects"])
            except Exception as exc:  # noqa: BLE001 - a run that fails is recorded, the others go on
                rec.update(verdict="error", error=f"{type(exc).__name__}: {exc}"[:300])
            rec["seconds"] = round(time.perf_counter() - t, 1)
            runs.append(rec)
            print(f"[{i + 1}/{len(todo)}] {model:9s} {group:8s} {rec['verdict']:10s} {rec['file']}: "
                  f"{'; '.join(rec.get('reasons', [])) or rec.get('error', '')}", file=sys.stderr, flush=True)
    table: dict[str, dict] = defaultdict(dict)
    for (model, group), rs in sorted(_groups(runs).items()):
        sig = defaultdict(list)
        for r in rs:
            for k, v in (r.get("signals") or {}).items():
                sig[k].append(v)
        table[model][group] = {"runs": len(rs), "verdicts": dict(Counter(r["verdict"] for r in rs)),
                               "signals": {k: [min(v), float(np.median(v)), max(v)] for k, v in sorted(sig.items())}}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = {"machine": f"{platform.node()} {platform.machine()}, {platform.processor() or ''}".strip(", "),
           "load": open("/proc/loadavg").read().split()[:3], "commit": commit,
           "seconds": round(time.perf_counter() - t0, 1), "table": table, "runs": runs,
           "note": "signals per group: [min, median, max] over its runs"}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


def _groups(runs):
    g = defaultdict(list)
    for r in runs:
        g[(r["model"], r["group"])].append(r)
    return g


if __name__ == "__main__":
    main()
