"""Benchmark: ``seamline diff`` of two runs of 10⁶ objects each, out of core (issue #23 item 5).

Two GeoParquet files are synthesised the way ``seamline segment`` writes them
(:func:`pipeline.synthetic_change.write_object_table`: its columns, the ``bbox`` covering column, zstd, row
groups of 100,000 rows in tile order — 1024-px tiles of a 0.5 m UTM scene): date 1 holds ``N`` polygons (16-gons,
2–4 m radius) on a jittered 12 m grid; date 2 is the same objects moved by a co-registration shift of
(+0.6, −0.4) m, each jittered by 5 cm and resized by ±5 % (flicker), with 1 % removed, 1 % grown (radius × 1.3)
and 1 % added (in the gaps of the grid). Then the real CLI (``python -m pipeline.cli diff``) runs in its own
process while this one samples the resident memory of that process tree every 0.1 s.

    PYTHONPATH=$PWD nice -n 10 python bench/diff_scale.py [--objects 1000000] [--out docs/bench/diff_scale.json]
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make(folder: Path, n: int, seed: int = 0) -> dict:
    import shapely

    from pipeline.synthetic_change import write_object_table

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    gy, gx = np.divmod(np.arange(n), side)
    x0, y0, spacing = 500000.0, 5000000.0, 12.0
    cx = x0 + (gx + 0.5) * spacing + rng.uniform(-2, 2, n)
    cy = y0 - (gy + 0.5) * spacing + rng.uniform(-2, 2, n)
    r = rng.uniform(2, 4, n)
    old = shapely.buffer(shapely.points(cx, cy), r, quad_segs=4)
    fate = rng.random(n)
    gone, grown = fate < 0.01, (fate >= 0.01) & (fate < 0.02)
    keep = ~gone
    dx, dy = 0.6, -0.4
    r2 = r * rng.uniform(0.975, 1.025, n) * np.where(grown, 1.3, 1.0)  # ±5 % in area; grown: × 1.69
    ncx, ncy = cx + dx + rng.normal(0, 0.05, n), cy + dy + rng.normal(0, 0.05, n)
    k_add = int(0.01 * n)
    add = rng.choice(n, k_add, replace=False)  # in the gap south-east of a grid cell's object
    ax, ay = x0 + (gx[add] + 1.0) * spacing + dx, y0 - (gy[add] + 1.0) * spacing + dy
    new = np.concatenate([shapely.buffer(shapely.points(ncx[keep], ncy[keep]), r2[keep], quad_segs=4),
                          shapely.buffer(shapely.points(ax, ay), 1.5, quad_segs=4)])
    tile = 1024 * 0.5
    t = time.perf_counter()
    for name, geoms in (("date1.parquet", old), ("date2.parquet", new)):  # area_px: 0.5 m pixels
        write_object_table(folder / name, geoms, "EPSG:32633", tile=tile, area_px=np.round(shapely.area(geoms) / 0.25))
    return {"objects_old": int(n), "objects_new": int(len(new)), "gone": int(gone.sum()), "grown": int(grown.sum()),
            "added": k_add, "shift_m": [dx, dy], "write_s": round(time.perf_counter() - t, 1),
            "file_mb": {p: round((folder / p).stat().st_size / 2**20, 1) for p in ("date1.parquet", "date2.parquet")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=1_000_000)
    ap.add_argument("--out", default="docs/bench/diff_scale.json")
    ap.add_argument("--keep", help="keep the files in this folder")
    a = ap.parse_args()
    from pipeline.bench import machine_info
    from pipeline.memwatch import TreeMemoryWatch

    tmp = Path(a.keep or tempfile.mkdtemp(prefix="diff_scale_"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        data = make(tmp, a.objects)
        import pyarrow.parquet as pq

        whole_table_mb = round(pq.read_table(tmp / "date1.parquet").nbytes / 2**20, 1)  # one table, decoded, for scale
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "pipeline.cli", "diff", str(tmp / "date1.parquet"), str(tmp / "date2.parquet"),
               "--out", str(tmp / "diff")]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with TreeMemoryWatch(0.1, pid=proc.pid) as watch:
            out, err = proc.communicate()
        peak = watch.peak_bytes
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"seamline diff failed ({proc.returncode}):\n{err[-3000:]}")
        s = json.loads((tmp / "diff" / "date2.changes.json").read_text())
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        result = {"data": data, "command": " ".join(["seamline", *cmd[3:]]), "seconds": round(seconds, 1),
                  "peak_rss_process_tree_mb": round(peak / 2**20, 1), "one_whole_table_decoded_mb": whole_table_mb,
                  "diff_timings_s": s["timings_s"], "diff_peak_rss_mb_own_report": s["peak_rss_process_tree_mb"],
                  "partition": s["partition"], "counts": s["counts"], "shift": s["shift"],
                  "relations": s["relations"], "changes_mb": round((tmp / "diff" / "date2.changes.parquet").stat().st_size / 2**20, 1),
                  "machine": machine_info(), "load_average_at_end": list(os.getloadavg()), "commit": commit,
                  "note": "machine shared with other engineers' jobs while measured"}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
