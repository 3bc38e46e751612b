"""Held-out F1 of aerial models, measured the way a user runs it (issue #22 items 2 and 5).

``--task buildings`` (the default): building F1 per country.

For each model, each held-out mosaic is segmented with ``seamline segment MOSAIC --config
configs/buildings.yaml --model M`` (regularised outlines; the resolution rule reads the mosaic at the model's
0.15 m) and scored with ``seamline evaluate RUN.parquet LABELS --like MOSAIC`` (F1 at mask IoU 0.5).

Held-out places (never trained on by the models of configs/train_buildings.yaml and train_buildings_stage2.yaml):

* **Banepa, Nepal** — the southern row of the 30 chips (web-map zoom 19, y = 220245, 6 chips, 3072 x 512 px at
  0.132 m, EPSG:4326 JPEG + .aux.xml): the part of the town nearest the hidden "south of Banepa" test;
* **Kampala, Uganda** — the two validation places of the shipped model (p47468_511, p47469_511) at zoom 19
  (0.30 m: the GSD of the Zanzibar test), 20 (0.15 m) and 21 (0.075 m).

Imagery OpenAerialMap (CC BY 4.0), outlines © OpenStreetMap contributors (ODbL).

``--task trees``: crown box F1 at box IoU 0.4 (``seamline segment TILE --config configs/trees.yaml --model M``,
``seamline evaluate RUN.parquet BOXES --boxes``), with and without ``--tta`` when ``--tta both``, on

* **another NEON tile** — ``configs/data/neon_yell_541000`` (Yellowstone, 279 boxes; never trained on);
* **the held-out half of OSBS_029** — ``configs/data/osbs_029_split/OSBS_029_bottom`` (Florida, 29 boxes).

    PYTHONPATH=$PWD nice -n 5 python bench/aerial_heldout.py buildings runs/cand_a [...] --out docs/bench/aerial_heldout.json
    PYTHONPATH=$PWD python bench/aerial_heldout.py --task trees trees runs/trees_c --tta both --out docs/bench/trees_heldout.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "aerial"
BANEPA = DATA / "banepa_buildings"
KAMPALA = DATA / "kampala_buildings"
Z20_X, Z20_Y = range(619224, 619228), range(523264, 523266)  # the two held-out Kampala places, zoom-20 tiles


def mosaics(zooms: tuple[int, ...]) -> dict[str, tuple[list[Path], Path]]:
    out = {"banepa_south": ([BANEPA / "chips" / f"OAM-{x}-220245-19.tif" for x in range(386690, 386696)],
                            BANEPA / "labels.gpkg")}
    for z in zooms:
        k = 2.0 ** (z - 20)
        xs = range(int(Z20_X.start * k), int(Z20_X.stop * k))
        ys = range(int(Z20_Y.start * k), int(Z20_Y.stop * k))
        out[f"kampala_val_z{z}"] = ([KAMPALA / "chips" / f"OAM-{x}-{y}-{z}.tif" for x in xs for y in ys], KAMPALA / "labels.gpkg")
    for name, (chips, _) in out.items():
        missing = [p for p in chips if not p.exists()]
        if missing:
            raise SystemExit(f"{name}: {len(missing)} chips missing, e.g. {missing[0]}: the benchmark reads ../shared/data")
    return out


def tree_tiles() -> dict[str, tuple[Path, Path]]:
    yell = ROOT / "configs" / "data" / "neon_yell_541000" / "2019_YELL_2_541000_4977000_image_crop"
    osbs = ROOT / "configs" / "data" / "osbs_029_split" / "OSBS_029_bottom"
    return {"yell_541000": (yell.with_suffix(".png"), yell.with_suffix(".xml")),
            "osbs_029_bottom": (osbs.with_suffix(".vrt"), osbs.with_suffix(".csv"))}


def seamline(*args: str, tries: int = 3) -> subprocess.CompletedProcess:
    """One CLI call; tried again when it fails (on the shared 2-core machine a Dask worker sometimes misses its
    shutdown timeout after the outputs are written, and the run exits non-zero)."""
    for _ in range(tries):
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        if r.returncode == 0:
            return r
    if r.returncode != 0:
        raise SystemExit(f"seamline {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return r


def score_trees(models: list[str], tta: str, work: Path) -> dict[str, dict]:
    """Box F1 at box IoU 0.4 of each model (with and/or without TTA) on each held-out tree tile."""
    results: dict[str, dict] = {}
    for name, (tile, boxes) in tree_tiles().items():
        for m in models:
            for on in {"off": (False,), "on": (True,), "both": (False, True)}[tta]:
                tag = Path(m).name + ("+tta" if on else "")
                run = work / tag
                seamline("segment", str(tile), "--out", str(run), "--config", "configs/trees.yaml", "--model", m,
                         "--workers", "1", "--tta" if on else "--no-tta", "--force")
                ev = run / f"{name}.eval.json"
                seamline("evaluate", str(run / f"{tile.stem}.parquet"), str(boxes), "--boxes", "--json", str(ev))
                row = json.loads(ev.read_text())["all"]
                results.setdefault(tag, {})[name] = row
                print(f"{tag:28s} {name:18s} box F1 {row['f1']:.3f}  {row}", flush=True)
    return results


def score_buildings(models: list[str], zooms: tuple[int, ...], work: Path) -> dict[str, dict]:
    """Building F1 at mask IoU 0.5 of each model on each held-out mosaic."""
    results: dict[str, dict] = {}
    for name, (chips, labels) in mosaics(zooms).items():
        vrt = work / f"{name}.vrt"
        subprocess.run(["gdalbuildvrt", "-q", str(vrt), *map(str, chips)], check=True)
        for m in models:
            tag = Path(m).name
            run = work / tag
            seamline("segment", str(vrt), "--out", str(run), "--config", "configs/buildings.yaml", "--model", m, "--workers", "1")
            ev = run / f"{name}.eval.json"
            seamline("evaluate", str(run / f"{name}.parquet"), str(labels), "--like", str(vrt), "--json", str(ev))
            e = json.loads(ev.read_text())["all"]
            r = e["at_0.5"]
            summary = json.loads((run / f"{name}.json").read_text())
            row = {k: r[k] for k in ("f1", "precision", "recall", "tp", "fp", "fn")}
            row |= {"n_gt": e["n_gt"], "n_pred": e["n_pred"], "splits": e["splits"], "merges": e["merges"]}
            row["working_resolution"] = summary["source"].get("scale")
            row["pixel_size_m"] = summary["source"].get("pixel_size")
            results.setdefault(m, {})[name] = row
            print(f"{tag:28s} {name:18s} F1 {row.get('f1', float('nan')):.3f}  {row}", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="model specs: buildings, or checkpoint paths")
    ap.add_argument("--out", default="docs/bench/aerial_heldout.json")
    ap.add_argument("--zooms", default="19,20", help="Kampala zoom levels to score (default 19,20)")
    ap.add_argument("--keep", help="keep mosaics and runs in this folder")
    ap.add_argument("--task", choices=("buildings", "trees"), default="buildings")
    ap.add_argument("--tta", choices=("off", "on", "both"), default="off", help="trees: test-time augmentation")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="aerial_heldout_"))
    work.mkdir(parents=True, exist_ok=True)
    results = score_trees(args.models, args.tta, work) if args.task == "trees" else \
        score_buildings(args.models, tuple(int(z) for z in args.zooms.split(",")), work)
    rec = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
           "load_average": os.getloadavg(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
