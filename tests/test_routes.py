"""One scene, one way: ``seamline segment``, ``python -m flows.segment`` and ``seamline watch --once`` run the
same runner, so they publish the same files and the same objects (the served watch under a real Prefect server
is compared in tests/test_prefect_server.py). Default settings but the model: what users run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import geopandas as gpd
import pytest
from servers import ROOT

from pipeline.synthetic import write_scene

pytestmark = pytest.mark.slow  # the CLI, a Prefect flow and a watch in subprocesses

PER_SCENE = {"parquet", "gpkg", "json", "qupath.geojson", "ome.zarr", "quicklook.png", "quicklook.tif", "html"}


def scene_files(out, stem: str) -> set[str]:
    """The kinds of file published for ``stem`` (``a.quicklook.png`` -> ``quicklook.png``)."""
    return {p.name[len(stem) + 1:] for p in out.iterdir() if p.name.startswith(stem + ".")}


def same_objects(a, b) -> None:
    ga, gb = (gpd.read_parquet(p).sort_values("object_id").reset_index(drop=True) for p in (a, b))
    assert len(ga) == len(gb) > 10
    assert (ga.object_id.values == gb.object_id.values).all() and (ga.area_px.values == gb.area_px.values).all()
    assert ga.geometry.geom_equals_exact(gb.geometry, tolerance=1e-9).all()


def _run(args, tmp_path, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
        "PYTHONPATH": str(ROOT), **env}
    r = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_cli_flow_and_watch_publish_the_same_files_and_objects(tmp_path):
    src = tmp_path / "incoming"
    src.mkdir()
    write_scene(src / "a.tif", 300, 340, seed=11)
    outs = {k: tmp_path / k for k in ("cli", "flow", "watch")}
    _run(["pipeline.cli", "segment", str(src / "a.tif"), "--out", str(outs["cli"]), "--model", "classical"], tmp_path)
    flow = _run(["flows.segment", str(src / "a.tif"), "--out", str(outs["flow"]), "--model", "classical"], tmp_path)
    _run(["pipeline.cli", "watch", str(src), "--out", str(outs["watch"]), "--model", "classical", "--once"], tmp_path)
    for out in outs.values():
        assert scene_files(out, "a") == PER_SCENE, out
    sums = {k: json.loads((o / "a.json").read_text()) for k, o in outs.items()}
    assert len({s["settings_fingerprint"] for s in sums.values()}) == 1
    assert sums["flow"]["orchestrator"] == "prefect" and sums["cli"]["orchestrator"] == "none"
    for s in sums.values():  # every route measures itself the same way
        assert s["timings_s"]["total"] > 0 and s["peak_rss_process_tree_mb"] > 0 and "label_image" in s
    same_objects(outs["cli"] / "a.parquet", outs["flow"] / "a.parquet")
    same_objects(outs["cli"] / "a.parquet", outs["watch"] / "a.parquet")
    # The flow's log is the pipeline's own: stage lines, none of Dask's INFO chatter.
    assert "segment 1 tiles" in flow.stderr and "distributed." not in flow.stderr, flow.stderr[-3000:]
