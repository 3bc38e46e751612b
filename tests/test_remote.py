"""Inputs by fsspec URL, and an existing Dask cluster by scheduler address (both for real, no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import geopandas as gpd
import pytest

from pipeline.config import SegmentConfig
from pipeline.errors import InputError
from pipeline.io.raster import inspect_raster
from pipeline.runner import segment_scene
from pipeline.synthetic import write_scene

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zipped_scene(tmp_path_factory):
    """A GeoTIFF and the same file inside a zip archive (read in place through fsspec, never extracted)."""
    d = tmp_path_factory.mktemp("remote")
    tif = d / "scene.tif"
    write_scene(tif, 330, 290, seed=4, crs="EPSG:32633")
    archive = d / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tif, "scene.tif")
    return tif, archive


def test_fsspec_url_input_gives_the_same_objects_as_the_local_file(zipped_scene, dask_client_session, tmp_path):
    tif, archive = zipped_scene
    url = f"zip://scene.tif::file://{archive}"
    cfg = SegmentConfig(model="classical", tile=128, halo=32)
    local = segment_scene(str(tif), tmp_path / "local", cfg, client=dask_client_session)
    remote = segment_scene(url, tmp_path / "url", cfg, client=dask_client_session)
    assert Path(remote["outputs"]["parquet"]).name == "scene.parquet"  # named after the image, not the archive
    assert remote["objects"] == local["objects"] > 10
    a, b = gpd.read_parquet(local["outputs"]["parquet"]), gpd.read_parquet(remote["outputs"]["parquet"])
    assert a.crs == b.crs and (a.area_px.values == b.area_px.values).all()


@pytest.mark.parametrize("url, match", [
    ("zip://missing.tif::file://{archive}", "reading failed: not found; check the URL"),
    ("nosuchscheme://bucket/scene.tif", "opening failed: no filesystem for this URL's scheme.*install its fsspec backend"),
])
def test_bad_urls_are_one_clear_line(zipped_scene, url, match):
    with pytest.raises(InputError, match=match):
        inspect_raster(url.format(archive=zipped_scene[1]))


@pytest.mark.slow  # starts its own cluster and a CLI run
def test_segment_on_an_existing_cluster_by_scheduler_address(zipped_scene, tmp_path):
    from distributed import LocalCluster

    tif, _ = zipped_scene
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "segment", str(tif), "--out", str(tmp_path),
                            "--model", "classical", "--tile", "128", "--halo", "32",
                            "--scheduler", cluster.scheduler_address],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        # The work ran on that cluster's worker, not on a LocalCluster of the command's own.
        assert cluster.scheduler.task_prefixes, "no task reached the existing cluster"
    s = json.loads((tmp_path / "scene.json").read_text())
    assert s["cluster"] == "remote" and s["objects"] > 10


@pytest.mark.slow  # waits for a connection timeout
def test_unreachable_scheduler_is_one_clear_line(zipped_scene, tmp_path):
    tif, _ = zipped_scene
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "segment", str(tif), "--out", str(tmp_path),
                        "--model", "classical", "--scheduler", "tcp://127.0.0.1:9"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--scheduler tcp://127.0.0.1:9: cannot connect" in lines[0], r.stderr
    assert not list(tmp_path.glob("scene.*"))
