"""Benchmark: flicker of ``seamline diff`` — the same place at three resolutions, where nothing changed
(issue #23 item 4).

The Kampala drone chips (../shared/data/aerial/kampala_buildings/chips: OpenAerialMap imagery, CC BY 4.0)
cover the same ground at web-map zoom 21 (0.075 m), 20 (0.15 m) and 19 (0.30 m). For each zoom, the chips of
the larger of the two places they show (zoom 20 tiles x 619224–619229, y 523264–523267: 24 chips; 96 at zoom
21, 6 at zoom 19) are mosaicked with ``gdalbuildvrt``, segmented with the shipped building model as documented
(``seamline segment … --model buildings --config configs/buildings.yaml``, which resamples every input to the
model's 0.15 m), and each pair of zooms is diffed with the default settings, and with a minimum mapping unit
(``--min-area`` 5 and 20 m²). Whatever the diff calls changed there is flicker: a different rendering of the
same buildings, never a real change.

Note: the building model was trained on Kampala mosaics that include these places, so its outlines here are
as good as they get; flicker on unseen imagery will be higher.

    PYTHONPATH=$PWD nice -n 10 python bench/diff_flicker_kampala.py [--out docs/bench/diff_flicker_kampala.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHIPS = ROOT.parent / "shared" / "data" / "aerial" / "kampala_buildings" / "chips"
Z20_X, Z20_Y = range(619224, 619230), range(523264, 523268)  # the larger place, as zoom-20 tile numbers
MIN_AREAS = (0.0, 5.0, 20.0)  # --min-area: off (the default), a shed, a small house (the labels: median 44 m²)


def chips(zoom: int) -> list[Path]:
    """The chips of the place at ``zoom`` (tile numbers scaled from zoom 20)."""
    k = 2.0 ** (zoom - 20)
    xs = range(int(Z20_X.start * k), int(Z20_X.stop * k))
    ys = range(int(Z20_Y.start * k), int(Z20_Y.stop * k))
    found = [CHIPS / f"OAM-{x}-{y}-{zoom}.tif" for x in xs for y in ys]
    missing = [p for p in found if not p.exists()]
    if missing:
        raise SystemExit(f"{len(missing)} chips missing, e.g. {missing[0]}: the benchmark reads ../shared/data")
    return found


def seamline(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0:
        raise SystemExit(f"seamline {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/bench/diff_flicker_kampala.json")
    ap.add_argument("--keep", help="keep the mosaics, runs and diffs in this folder")
    a = ap.parse_args()
    from pipeline.bench import machine_info

    tmp = Path(a.keep or tempfile.mkdtemp(prefix="diff_flicker_"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        vrts = {}
        for z in (21, 20, 19):
            vrts[z] = tmp / f"kampala_z{z}.vrt"
            subprocess.run(["gdalbuildvrt", "-q", str(vrts[z]), *map(str, chips(z))], check=True)
        t = time.perf_counter()
        seamline("segment", *map(str, vrts.values()), "--out", str(tmp / "runs"), "--model", "buildings",
                 "--config", "configs/buildings.yaml", "--quiet")
        seg_s = time.perf_counter() - t
        runs = {z: json.loads((tmp / "runs" / f"kampala_z{z}.json").read_text()) for z in vrts}
        pairs = {}
        for old, new in ((20, 21), (19, 20), (19, 21)):
            for min_area in MIN_AREAS:
                out = tmp / f"diff_{old}_{new}_min{min_area:g}"
                seamline("diff", str(tmp / "runs" / f"kampala_z{old}.parquet"), str(tmp / "runs" / f"kampala_z{new}.parquet"),
                         "--out", str(out), "--min-area", str(min_area), "--quiet")
                s = json.loads((out / f"kampala_z{new}.changes.json").read_text())
                compared = max(s["old"]["compared"], s["new"]["compared"])
                key = f"z{old}_vs_z{new}" + (f"_min_area_{min_area:g}m2" if min_area else "")
                pairs[key] = {
                    "objects": [s["old"]["objects"], s["new"]["objects"]], "compared": [s["old"]["compared"], s["new"]["compared"]],
                    "min_area_m2": min_area, "counts": s["counts"], "changed": s["changed"],
                    "changed_share": round(s["changed"] / max(compared, 1), 4), "relations": s["relations"],
                    "shift": s["shift"], "timings_s": s["timings_s"]}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        result = {"place": {"chips": {f"z{z}": len(chips(z)) for z in vrts}, "zoom20_x": [Z20_X.start, Z20_X.stop - 1],
                            "zoom20_y": [Z20_Y.start, Z20_Y.stop - 1]},
                  "segment": {"command": "seamline segment kampala_z21.vrt kampala_z20.vrt kampala_z19.vrt --model "
                                         "buildings --config configs/buildings.yaml", "seconds": round(seg_s, 1),
                              "objects": {f"z{z}": r["objects"] for z, r in runs.items()},
                              "source_pixel_m": {f"z{z}": r["source"]["pixel_size"][0] for z, r in runs.items()}},
                  "pairs": pairs, "machine": machine_info(), "commit": commit,
                  "note": "machine shared with other engineers' jobs while measured"}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
