"""The Prefect flows run for real (ephemeral, offline, no server), produce the outputs, and skip done scenes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.synthetic import write_scene

pytestmark = pytest.mark.slow  # Prefect flows in subprocesses

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            "PREFECT_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    return env


def test_batch_flow_processes_each_scene_once(tmp_path):
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_scene(a, 300, 340, seed=1)
    write_scene(b, 260, 300, seed=2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: classical\ntile: 128\nhalo: 32\nworkers: 1\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flows.segment", str(a), str(b), "--out", str(out), "--config", str(cfg)]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for stem in ("a", "b"):
        s = json.loads((out / f"{stem}.json").read_text())
        assert s["objects"] > 10 and s["orchestrator"] == "prefect"
        assert (out / f"{stem}.parquet").is_file() and (out / f"{stem}.gpkg").is_file()
        for k in ("quicklook_png", "quicklook_tif", "report"):  # made before the work folder went
            assert Path(s["outputs"][k]).is_file(), s["outputs"]
    mtime = (out / "a.parquet").stat().st_mtime_ns
    r2 = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "skipped" in r2.stdout and (out / "a.parquet").stat().st_mtime_ns == mtime
    assert not (out / ".seamline-work" / "a").exists()


def test_served_watch_takes_a_shipped_config_by_name(monkeypatch, tmp_path):
    """`watch --config buildings --cron ...`: the deployment's runs start elsewhere, so the config goes to them as
    the absolute path of the shipped file (not `<cwd>/buildings`, which every scheduled run failed to read)."""
    import flows.watch as fw

    seen = {}
    monkeypatch.setattr(fw.watch_flow, "serve", lambda **kw: seen.update(kw))
    monkeypatch.chdir(tmp_path)
    fw.serve_watch(str(tmp_path / "in"), str(tmp_path / "out"), config="buildings", interval=60)
    path = Path(seen["parameters"]["config"])
    assert path.is_absolute() and path.is_file() and path.name == "buildings.yaml", path
    mine = tmp_path / "mine.yaml"
    mine.write_text("model: classical\n")
    fw.serve_watch(str(tmp_path / "in"), str(tmp_path / "out"), config="mine.yaml", interval=60)
    assert seen["parameters"]["config"] == str(mine.resolve())
