"""Classical model, two checkouts side by side (issue #29): the same scenes, runs alternated, one machine.

    git worktree add /tmp/before 53db3f9
    python bench/classical_side_by_side.py --before /tmp/before --size 8192 --cells 24 96 --rounds 2 \\
        --json docs/bench/classical_side_by_side_8192.json
    python bench/classical_side_by_side.py --before /tmp/before --size 8192 --cells 24 96 --mode tile_cpu \\
        --json docs/bench/classical_tile_cpu_8192.json

``--mode end_to_end`` (default): each run is ``segment_scene`` with ``seamline bench``'s settings (classical,
1024-px tiles, 2 workers) in a fresh process whose ``PYTHONPATH`` is the checkout. ``--mode tile_cpu``: the
scene is ingested, then every tile goes through the tile task (``process_tiles``) one after the other in that
one process, its clock replaced by CPU time: CPU seconds per step (read, instances, vectorize, measure) of the
same tiles, the figure least disturbed by other work on the machine.

Scenes come from ``pipeline.synthetic.write_periodic_scene`` (the benchmark's objects; ``cell`` 24 = dense,
96 = sparse), written once. Recorded per end-to-end run: wall seconds per stage, the workers' seconds per step,
CPU seconds of the whole process tree (user + system: far less sensitive than wall time to other work on a
shared machine), peak RSS of the process tree per stage, objects, and the load average before and after. Runs
alternate before/after so that a change in load hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(scene: str, out: str) -> None:
    """One run in this process (the checkout on PYTHONPATH): prints one JSON line."""
    import shutil
    import threading

    import psutil

    from pipeline import runner
    from pipeline.config import SegmentConfig

    samples: list = []
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not stop.is_set():
            total = me.memory_info().rss
            for p in me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            samples.append((time.time(), total))
            stop.wait(0.1)

    marks: list = []
    for name in ("run_ingest", "run_tiles", "run_stitch", "stage_outputs"):
        f = getattr(runner, name)

        def timed(*a, _f=f, _n=name, **k):
            t = time.time()
            try:
                return _f(*a, **k)
            finally:
                marks.append((_n, t, time.time()))

        setattr(runner, name, timed)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    s = runner.segment_scene(scene, out, SegmentConfig(model="classical", tile=1024, workers=2))
    stop.set()
    th.join()
    peak = {n: round(max((m for t, m in samples if a <= t <= b), default=0) / 2**20) for n, a, b in marks}
    print(json.dumps({"objects": s["objects"], "timings_s": s["timings_s"], "megapixels_per_s": s["megapixels_per_s"],
                      "worker_seconds": {k: round(v, 1) for k, v in s["worker_seconds"].items()},
                      "peak_rss_process_tree_mb": s["peak_rss_process_tree_mb"], "peak_rss_per_stage_mb": peak}))
    shutil.rmtree(out, ignore_errors=True)


def _child_tile_cpu(scene: str, out: str) -> None:
    """Every tile of the scene through ``process_tiles`` in this process, timed in CPU seconds: one JSON line."""
    import shutil
    import types

    import zarr
    from distributed import Client
    from zarr.codecs import ZstdCodec

    import pipeline.stages.tile_task as tiles
    from pipeline import runner
    from pipeline.config import SegmentConfig
    from pipeline.settings import resolve_settings

    plan = runner.plan_scene(scene, out, resolve_settings(SegmentConfig(model="classical", tile=1024, workers=1)))
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as cl:
        stats = runner.run_ingest(cl, plan)
    job = runner.make_job(plan, stats)
    w = job.window_size
    zarr.create_array(store=str(Path(str(plan.workdir)) / "windows.zarr"), shape=(len(job.grid), w, w), chunks=(1, 256, 256),
                      dtype="uint32", compressors=[ZstdCodec(level=1)], fill_value=0, overwrite=True)
    tiles.time = types.SimpleNamespace(perf_counter=time.process_time, process_time=time.process_time)
    t0 = time.process_time()
    total: dict = {}
    pieces = 0
    n = len(job.grid)
    for s in range(0, n, 4):
        r = tiles.process_tiles(job, list(range(s, min(n, s + 4))))
        pieces += r["pieces"]
        for k, v in r["timings"].items():
            if not k.endswith("_cpu"):
                total[k] = total.get(k, 0.0) + v
    cpu = time.process_time() - t0
    print(json.dumps({"tiles": n, "pieces": pieces, "cpu_s_tile_stage": round(cpu, 2),
                      "cpu_s_per_step": {k: round(v, 2) for k, v in total.items()},
                      "cpu_s_per_tile": round(cpu / n, 3)}))
    shutil.rmtree(out, ignore_errors=True)


def _commit(checkout: Path) -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True)
    d = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=checkout, capture_output=True, text=True)
    return r.stdout.strip() + ("+changes" if d.stdout.strip() else "")


def _run(checkout: Path, scene: Path, work: Path, mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    load0 = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run([sys.executable, __file__, f"--{mode}", str(scene), str(work / "out")], env=env, cwd=checkout,
                       capture_output=True, text=True)
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise RuntimeError(f"run in {checkout} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res.update({"process_wall_s": round(wall, 1), "load_average_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
                "cpu_s_process_tree": round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 1)})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, type=Path, help="checkout of the code before (git worktree add ...)")
    ap.add_argument("--after", default=ROOT, type=Path, help="checkout of the code after (default: this one)")
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--cells", type=int, nargs="+", default=[24, 96], help="object grid spacing: 24 dense, 96 sparse")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--mode", choices=["end_to_end", "tile_cpu"], default="end_to_end")
    ap.add_argument("--scenes", type=Path, default=Path(tempfile.gettempdir()) / "seamline_side_by_side")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipeline.bench import machine_info
    from pipeline.synthetic import write_periodic_scene

    a.scenes.mkdir(parents=True, exist_ok=True)
    codes = {"before": a.before.resolve(), "after": a.after.resolve()}
    out = {"machine": machine_info(), "commits": {k: _commit(v) for k, v in codes.items()},
           "settings": {"model": "classical", "tile": 1024, "workers": 2 if a.mode == "end_to_end" else 1, "size": a.size,
                        "rounds": a.rounds, "mode": a.mode},
           "runs": []}
    for cell in a.cells:
        scene = a.scenes / f"periodic_{a.size}_cell{cell}.tif"
        if not scene.exists():
            write_periodic_scene(scene, a.size, seed=11, cell=cell, radius=(4, 9))
        for rnd in range(a.rounds):
            order = ["before", "after"] if rnd % 2 == 0 else ["after", "before"]
            for which in order:
                with tempfile.TemporaryDirectory(dir=a.scenes) as td:
                    r = _run(codes[which], scene, Path(td), a.mode)
                r.update({"code": which, "commit": out["commits"][which], "cell": cell, "round": rnd})
                out["runs"].append(r)
                print(json.dumps(r), flush=True)
                if a.json:
                    a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--end_to_end":
        _child(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "--tile_cpu":
        _child_tile_cpu(sys.argv[2], sys.argv[3])
    else:
        main()
