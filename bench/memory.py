"""Peak memory of `seamline segment` as users run it: the whole process tree, the driver, and each worker.

Runs the CLI in a subprocess (default settings but the model; ``--workers`` as given) and samples the RSS of
every process of its tree every 0.1 s, so the figures are what a laptop's memory has to hold. Scenes
(generated once into ``--work``, bounded memory):

* ``micro67``: a 67 Mpx two-channel uint16 OME-TIFF (8192 x 8192, DAPI + a membrane-like channel, 0.5 um
  pixels, tiled, with a pyramid): synthetic nuclei of real size (8-11 um);
* ``slide604``: a 604 Mpx one-channel slide (24576 x 24576, 0.5 um, pyramid), 12 % of it tissue in
  islands of nuclei, the rest dark glass: a whole-slide run's shape (tissue detection skips the glass).

    python bench/memory.py --scene micro67 --model default --workers 2 --json docs/bench/memory_micro67.json

Results name the machine and the commit. Load on the machine changes times, not memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.bench import machine_info  # noqa: E402
from pipeline.synthetic import render, scene_blobs  # noqa: E402


def _pyramid_ome(path: Path, height: int, width: int, channels: list[str], strip_fn, px_um: float = 0.5) -> None:
    """Write a tiled OME-TIFF pyramid (levels /2, /4, /8) strip by strip from ``strip_fn(row0, h) -> (C, h, W)``."""
    tile = 512
    shape = (len(channels), height, width)

    def gen(level: int):
        f = 2 ** level
        h, w = -(-height // f), -(-width // f)
        for c in range(len(channels)):
            for r0 in range(0, h, tile):
                rows = min(tile, h - r0)
                block = strip_fn(r0 * f, rows * f, channel=c)[::f, ::f][:rows, :w]
                for c0 in range(0, w, tile):
                    t = np.zeros((tile, tile), np.uint16)
                    part = block[:, c0 : c0 + tile]
                    t[: part.shape[0], : part.shape[1]] = part
                    yield t

    meta = {"axes": "CYX", "Channel": {"Name": channels}, "PhysicalSizeX": px_um, "PhysicalSizeY": px_um,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(gen(0), shape=shape, dtype="uint16", tile=(tile, tile), compression="zlib", subifds=3, metadata=meta)
        for lv in (1, 2, 3):
            f = 2 ** lv
            tw.write(gen(lv), shape=(len(channels), -(-height // f), -(-width // f)), dtype="uint16",
                     tile=(tile, tile), compression="zlib", subfiletype=1)


def make_micro67(path: Path) -> None:
    size = 8192
    blobs = scene_blobs(size, size, cell=26, radius=(8, 11), fill=0.85, seed=67)

    def strip(row0: int, h: int, channel: int = 0) -> np.ndarray:
        img, _ = render(blobs, row0, h, size)
        rng = np.random.default_rng([67, channel, row0])
        if channel == 0:  # DAPI: the nuclei
            v = img * 3000 + 200 + rng.normal(0, 40, img.shape)
        else:  # a second marker: rings around the nuclei, dimmer
            from scipy import ndimage as ndi

            ring = ndi.grey_dilation(img, size=7) - img
            v = ring * 1500 + 300 + rng.normal(0, 60, img.shape)
        return np.clip(v, 0, 65535).astype(np.uint16)

    _pyramid_ome(path, size, size, ["DAPI", "CD45"], strip)


def make_slide604(path: Path) -> None:
    size = 24576
    island = 2048
    rng = np.random.default_rng(604)
    grid = size // island
    tissue = {(r, c) for r in range(grid) for c in range(grid) if rng.random() < 0.12}  # 12 % of the area
    blobs = {k: scene_blobs(island, island, cell=26, radius=(8, 11), fill=0.85, seed=1000 + k[0] * grid + k[1])
             for k in tissue}

    def strip(row0: int, h: int, channel: int = 0) -> np.ndarray:
        out = np.full((h, size), 180, np.float32)
        for gr in range(row0 // island, min(grid, -(-(row0 + h) // island))):
            for gc in range(grid):
                if (gr, gc) not in tissue:
                    continue
                r0 = max(row0, gr * island)
                r1 = min(row0 + h, (gr + 1) * island)
                img, _ = render(blobs[(gr, gc)], r0 - gr * island, r1 - r0, island)
                out[r0 - row0 : r1 - row0, gc * island : (gc + 1) * island] = img * 3000 + 250
        noise = np.random.default_rng([604, row0]).normal(0, 30, out.shape)
        return np.clip(out + noise, 0, 65535).astype(np.uint16)

    _pyramid_ome(path, size, size, ["DAPI"], strip)


SCENES = {"micro67": make_micro67, "slide604": make_slide604}


class TreeSampler:
    """Per-process peak RSS of a process and its descendants, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_total = 0
        self.peaks: dict[int, int] = {}
        self.cmd: dict[int, str] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    if p.pid not in self.cmd:
                        self.cmd[p.pid] = " ".join(p.cmdline())[:120]
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), rss)
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def run(scene: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "pipeline.cli", "segment", str(scene), "--out", str(out), "--quiet", "--force", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeSampler(proc.pid) as s:
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"segment failed ({proc.returncode}): {stderr[-2000:]}")
    summary = json.loads((out / f"{scene.name.split('.')[0]}.json").read_text())
    gib = 2**30
    workers = {pid: v for pid, v in s.peaks.items() if "spawn_main" in s.cmd.get(pid, "") and "resource_tracker" not in s.cmd.get(pid, "")}
    return {"command": " ".join(["seamline", *cmd[3:]]), "seconds": round(time.time() - t0, 1),
            "peak_tree_gib": round(s.peak_total / gib, 3),
            "peak_driver_gib": round(s.peaks.get(proc.pid, 0) / gib, 3),
            "peak_worker_gib": sorted(round(v / gib, 3) for v in workers.values()),
            "objects": summary["objects"], "megapixels": round(summary["width"] * summary["height"] / 1e6, 1),
            "tiles": summary["tiling"]["tiles"], "tiles_skipped": summary.get("tiles_skipped"),
            "workers_config": summary.get("workers"), "summary_peak_mb": summary.get("peak_rss_process_tree_mb"),
            "timings_s": summary.get("timings_s")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", choices=sorted(SCENES), required=True)
    ap.add_argument("--work", default="bench_out/memory", help="where scenes and outputs go")
    ap.add_argument("--json", help="append the result to this JSON list")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="more segment flags after --, e.g. -- --model default")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"{a.scene}.ome.tif"
    if not scene.exists():
        t = time.time()
        SCENES[a.scene](scene)
        print(f"wrote {scene} in {time.time() - t:.0f} s", file=sys.stderr)
    extra = [x for x in a.args if x != "--"]
    res = run(scene, work / f"out_{a.scene}", extra)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    res.update({"scene": a.scene, "machine": machine_info(), "commit": commit,
                "load_avg": [round(x, 1) for x in os.getloadavg()]})
    print(json.dumps(res, indent=2))
    if a.json:
        p = Path(a.json)
        prev = json.loads(p.read_text()) if p.exists() else []
        p.write_text(json.dumps([*prev, res], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
