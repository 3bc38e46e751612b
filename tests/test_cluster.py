"""A cluster whose nodes share no disk: a real ``dask scheduler`` and two ``dask worker`` processes, each with its
own HOME, TMPDIR, working directory and ``--local-directory``, everything else through a real S3 API server
(moto, its own process) on loopback. The result equals a local run object for object, no work file lands on a
node outside Dask's scratch space, a worker killed mid-run changes nothing, and a driver killed mid-run is
resumed from the tiles already in the bucket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import geopandas as gpd
import pytest
from servers import ROOT, S3_ENV, DaskNodes, files_outside_scratch, fresh_s3fs, make_bucket, moto_s3, s3_client

from pipeline.config import SegmentConfig
from pipeline.synthetic import write_scene

pytestmark = pytest.mark.slow  # real dask scheduler and worker processes and an S3 server

CFG = SegmentConfig(model="classical", tile=96, halo=32, tiles_per_task=1, label_image=False, report=False,
                    qupath_geojson=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """moto S3 + scheduler + 2 workers, started once for the module; the AWS variables point here at moto."""
    root = tmp_path_factory.mktemp("cluster")
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    with moto_s3(root) as endpoint:
        env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
        os.environ.update(env)
        fresh_s3fs()
        nodes = DaskNodes(root / "nodes", 2, env)
        try:
            nodes.wait_workers(2)
            bucket = make_bucket(endpoint)
            tif = root / "scene.tif"
            write_scene(tif, 520, 480, seed=11, crs="EPSG:32633")
            s3_client(endpoint).upload_file(str(tif), bucket, "in/scene.tif")
            yield {"endpoint": endpoint, "nodes": nodes, "bucket": bucket, "tif": tif, "env": env}
        finally:
            nodes.close()
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def local_result(cluster, tmp_path_factory):
    """The same scene through a LocalCluster with local paths: the reference."""
    from pipeline.runner import segment_scene
    from pipeline.stages.dispatch import dask_client

    with dask_client(workers=1) as c:
        s = segment_scene(str(cluster["tif"]), tmp_path_factory.mktemp("local"), CFG, client=c)
    return s, gpd.read_parquet(s["outputs"]["parquet"])


def _same_objects(local_gdf, url: str) -> None:
    remote = gpd.read_parquet(url)
    assert len(remote) == len(local_gdf) > 20
    assert (remote.area_px.values == local_gdf.area_px.values).all()
    assert remote.geometry.geom_equals_exact(local_gdf.geometry, 0).all()


def test_nodes_sharing_no_disk_give_the_local_result(cluster, local_result):
    from distributed import Client

    from pipeline.runner import segment_scene

    b = cluster["bucket"]
    with Client(cluster["nodes"].address, timeout="30s") as c:
        s = segment_scene(f"s3://{b}/in/scene.tif", f"s3://{b}/out1", CFG.model_copy(update={"scheduler": "given"}), client=c)
        workers = {w["name"] for w in c.scheduler_info()["workers"].values()}
    assert workers == {"w0", "w1"} and s["cluster"] == "remote"
    _same_objects(local_result[1], s["outputs"]["parquet"])
    for node in cluster["nodes"].nodes:  # nothing outside Dask's scratch space on any node
        assert files_outside_scratch(node) == [], node
    keys = [o["Key"] for o in s3_client(cluster["endpoint"]).list_objects_v2(Bucket=b, Prefix="out1/")["Contents"]]
    assert sorted(keys) == ["out1/scene.gpkg", "out1/scene.json", "out1/scene.parquet"]  # work folder removed


def test_a_worker_killed_mid_run_changes_nothing(cluster, local_result):
    from distributed import Client

    from pipeline.runner import segment_scene

    b, nodes = cluster["bucket"], cluster["nodes"]
    result: dict = {}

    def run():
        with Client(nodes.address, timeout="30s") as c:
            result["s"] = segment_scene(f"s3://{b}/in/scene.tif", f"s3://{b}/out2", CFG, client=c)

    t = threading.Thread(target=run)
    t.start()
    _wait_parts(cluster, "out2", 3)
    victim = nodes.workers[0]
    victim.send_signal(signal.SIGKILL)  # mid-run: tiles in flight on it are lost
    nodes.add_worker("w2")
    t.join(timeout=600)
    assert victim.poll() is not None and "s" in result
    _same_objects(local_result[1], result["s"]["outputs"]["parquet"])


def test_a_killed_driver_resumes_from_the_tiles_in_the_bucket(cluster, local_result, tmp_path):
    b, nodes = cluster["bucket"], cluster["nodes"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: classical\ntile: 96\nhalo: 32\ntiles_per_task: 1\nlabel_image: false\nreport: false\n"
                   "qupath_geojson: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PYTHONPATH": str(ROOT), **cluster["env"]}
    cmd = [sys.executable, "-m", "pipeline.cli", "segment", f"s3://{b}/in/scene.tif", "--out", f"s3://{b}/out3",
           "--config", str(cfg), "--scheduler", nodes.address, "--quiet"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    n_before = _wait_parts(cluster, "out3", 4)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    done_at_kill = len(_parts(cluster, "out3"))
    assert not _keys(cluster, "out3/scene.json")  # no summary: the run did not finish
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(s3_client(cluster["endpoint"]).get_object(Bucket=b, Key="out3/scene.json")["Body"].read())
    n = s["tiling"]["tiles"]
    assert n_before <= done_at_kill <= s["tiles_resumed"] < n and s["tiles_processed"] + s["tiles_resumed"] == n
    _same_objects(local_result[1], f"s3://{b}/out3/scene.parquet")


def _keys(cluster, prefix: str) -> list[str]:
    r = s3_client(cluster["endpoint"]).list_objects_v2(Bucket=cluster["bucket"], Prefix=prefix)
    return [o["Key"] for o in r.get("Contents", [])]


def _parts(cluster, out: str) -> list[str]:
    return [k for k in _keys(cluster, f"{out}/.seamline-work/scene/parts/") if k.endswith(".parquet")]


def _wait_parts(cluster, out: str, n: int, timeout: float = 300) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        k = len(_parts(cluster, out))
        if k >= n:
            return k
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {n} tile parts after {timeout} s")
