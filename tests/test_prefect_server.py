"""Prefect for real: a ``prefect server start`` on 127.0.0.1 started by the test, ``seamline watch --interval``
serving its deployment there, and a scheduled run executing and completing with each scene's stages as tasks;
the Dask workers of that run point at the same server (``PREFECT_API_URL``), never a temporary one each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servers import BIN, ROOT, free_port, stop, wait_port
from test_routes import same_objects, scene_files

from pipeline.synthetic import write_scene

pytestmark = pytest.mark.slow  # a real `prefect server`


def _prefect_env(home: Path, api: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               PREFECT_UI_ENABLED="false", PYTHONPATH=str(ROOT), PREFECT_LOGGING_LEVEL="INFO",
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="3", PREFECT_RUNNER_POLL_FREQUENCY="2")
    if api:
        env["PREFECT_API_URL"] = api
    return env


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=home, env=_prefect_env(home), stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_port(port, proc, timeout=180, what="prefect server")
        t0 = time.time()
        while time.time() - t0 < 120:
            try:
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield api
    finally:
        stop(proc, timeout=30)
        log.close()


def _post(api: str, path: str, body: dict) -> list[dict]:
    r = httpx.post(f"{api}{path}", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


def test_scheduled_watch_run_completes_on_a_real_server(prefect_api, tmp_path):
    src, dest = tmp_path / "incoming", tmp_path / "results"
    src.mkdir()
    write_scene(src / "a.tif", 220, 200, seed=3)
    write_scene(src / "b.tif", 180, 210, seed=4)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: classical\ntile: 128\nhalo: 32\nworkers: 1\nlabel_image: false\nreport: false\n")
    serve = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "watch", str(src), "--out", str(dest),
                              "--config", str(cfg), "--interval", "20"], cwd=ROOT,
                             env=_prefect_env(tmp_path / "client-home", prefect_api),
                             stdout=open(tmp_path / "serve.log", "wb"), stderr=subprocess.STDOUT)
    try:
        run = None
        t0 = time.time()
        while time.time() - t0 < 420 and run is None:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            done = _post(prefect_api, "/flow_runs/filter",
                         {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}, "limit": 5})
            run = next((r for r in done if r.get("deployment_id")), None)
            time.sleep(2)
        assert run is not None, (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            stop(serve)
    dep = httpx.get(f"{prefect_api}/deployments/{run['deployment_id']}", timeout=30).json()
    assert dep["name"].startswith("watch-incoming-") and dep["schedules"], dep
    assert dep.get("global_concurrency_limit", {}).get("limit") == 1 or dep.get("concurrency_limit") == 1, dep
    assert run["auto_scheduled"] is True  # created by the schedule, not by hand
    tasks = _post(prefect_api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}, "limit": 200})
    names = {t["name"].rsplit("-", 1)[0] for t in tasks}  # "segment-tiles-0" -> "segment-tiles"
    assert {"plan", "ingest+stats", "segment-tiles", "stitch", "write", "publish"} <= names, names
    assert all(t["state_type"] == "COMPLETED" for t in tasks)
    logs = _post(prefect_api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
    assert any(f"Dask workers report to ['{prefect_api}']" in m["message"] for m in logs), [m["message"] for m in logs]
    for stem in ("a", "b"):
        assert (dest / f"{stem}.json").is_file() and (dest / f"{stem}.parquet").is_file()
    assert (dest / "_seamline" / "ledger.parquet").is_file()
    # The fourth route (tests/test_routes.py has the other three): the served watch published what
    # `seamline segment` publishes with the same config — the same files and the same objects.
    cli = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "segment", str(src / "a.tif"), "--out", str(cli),
                        "--config", str(cfg), "--quiet"], cwd=ROOT, env=_prefect_env(tmp_path / "cli-home"),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert scene_files(cli, "a") == scene_files(dest, "a") == {"parquet", "gpkg", "json", "qupath.geojson"}
    same_objects(cli / "a.parquet", dest / "a.parquet")
