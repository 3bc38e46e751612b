"""The storage layer: inputs, work folder and outputs on object storage (a real S3 API server on loopback), and
publishing without rename (the JSON summary last, as the commit marker naming every file with size + sha256)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest

from pipeline.config import SegmentConfig
from pipeline.errors import InputError
from pipeline.io import storage
from pipeline.io.publish import Staging, verify_outputs
from pipeline.synthetic import write_scene
from servers import ROOT, S3_ENV, make_bucket, moto_s3, s3_client, s3_environment


# --------------------------------------------------------------------------- publishing (no server needed)
@pytest.mark.parametrize("base", ["memory://pub/out", "LOCAL"])
def test_publish_lists_every_file_and_the_json_is_the_commit_marker(base, tmp_path):
    out = str(tmp_path / "out") if base == "LOCAL" else f"{base}-{os.getpid()}"
    st = Staging(out, "scene")
    Path(st.path("parquet", "scene.parquet")).write_bytes(b"p" * 100)
    folder = Path(st.path("labels", "scene.labels.zarr"))
    (folder / "0").mkdir(parents=True)
    (folder / "zarr.json").write_text("{}")
    (folder / "0" / "c").write_bytes(b"xyz")
    s = st.publish({"objects": 3})
    assert set(s["files"]) == {"scene.parquet", "scene.labels.zarr/zarr.json", "scene.labels.zarr/0/c"}
    assert s["files"]["scene.parquet"]["size"] == 100 and len(s["files"]["scene.parquet"]["sha256"]) == 64
    assert s["outputs"]["json"] == storage.join(out, "scene.json")
    assert verify_outputs(out, "scene", deep=True)["objects"] == 3
    assert not os.path.exists(st.dir)  # staging cleaned up
    if base == "LOCAL":
        assert sorted(os.listdir(out)) == ["scene.json", "scene.labels.zarr", "scene.parquet"]  # no temp left
    # A file that disagrees with the marker: the set is not trusted.
    storage.write_bytes(storage.join(out, "scene.parquet"), b"q" * 100)
    assert verify_outputs(out, "scene") is not None and verify_outputs(out, "scene", deep=True) is None
    storage.write_bytes(storage.join(out, "scene.parquet"), b"short")
    assert verify_outputs(out, "scene") is None


def test_a_publish_killed_midway_leaves_no_json(tmp_path, monkeypatch):
    out = f"memory://killed-{os.getpid()}/out"
    first = Staging(out, "s")
    Path(first.path("parquet", "s.parquet")).write_bytes(b"old")
    Path(first.path("gpkg", "s.gpkg")).write_bytes(b"old")
    first.publish({"v": 1})
    assert verify_outputs(out, "s")["v"] == 1
    fs, _ = storage.fs_path(out)
    calls = []
    real_copy = type(fs).copy

    def dying_copy(self, *a, **k):  # the process "dies" after the first file reached its final key
        calls.append(a)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_copy(self, *a, **k)

    monkeypatch.setattr(type(fs), "copy", dying_copy)
    second = Staging(out, "s")
    Path(second.path("parquet", "s.parquet")).write_bytes(b"new parquet")
    Path(second.path("gpkg", "s.gpkg")).write_bytes(b"new gpkg")
    with pytest.raises(KeyboardInterrupt):
        second.publish({"v": 2})
    assert not storage.exists(storage.join(out, "s.json"))  # neither the old nor a new marker
    assert verify_outputs(out, "s") is None
    assert not [n for n in storage.listdir(storage.join(out, "_seamline", "tmp"))]  # temporary keys removed


# --------------------------------------------------------------------------- object storage, end to end
@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback; the standard AWS variables point this process at it (no project setting)."""
    with s3_environment(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3_client_local(s3):
    """A LocalCluster started after the AWS variables are set (its workers inherit them, as any would)."""
    from pipeline.stages.dispatch import dask_client

    with dask_client(workers=2, threads_per_worker=1) as c:
        yield c


def test_input_workdir_and_outputs_on_s3_equal_a_local_run(s3, s3_client_local, tmp_path):
    from pipeline.runner import segment_scene

    tif = tmp_path / "scene.tif"
    write_scene(tif, 330, 290, seed=4, crs="EPSG:32633")
    bucket = make_bucket(s3)
    s3_client(s3).upload_file(str(tif), bucket, "incoming/scene.tif")
    cfg = SegmentConfig(model="classical", tile=128, halo=32, keep_intermediate=True)
    local = segment_scene(str(tif), tmp_path / "local", cfg, client=s3_client_local)
    out = f"s3://{bucket}/results"
    remote = segment_scene(f"s3://{bucket}/incoming/scene.tif", out, cfg, client=s3_client_local)
    assert remote["workdir"] == f"{out}/.seamline-work/scene"
    keys = {o["Key"] for o in s3_client(s3).list_objects_v2(Bucket=bucket, Prefix="results/")["Contents"]}
    assert {"results/scene.parquet", "results/scene.gpkg", "results/scene.json"} <= keys
    assert any(k.startswith("results/.seamline-work/scene/parts/t") for k in keys)  # the work folder is in the bucket
    assert "results/.seamline-work/scene/windows.zarr/zarr.json" in keys
    assert not [k for k in keys if "/_seamline/tmp/" in k]
    assert {"scene.parquet", "scene.gpkg", "scene.qupath.geojson", "scene.ome.zarr/labels/objects/.zattrs"} <= set(remote["files"])
    assert all(("sha256" in m or "etag" in m) and m["size"] >= 0 for m in remote["files"].values())
    assert {k[len("results/"):] for k in keys if not k.startswith(("results/.seamline-work/", "results/scene.json"))} \
        == set(remote["files"])  # the JSON names every output file, and nothing else was published
    assert verify_outputs(out, "scene", deep=True) is not None
    a = gpd.read_parquet(local["outputs"]["parquet"])
    b = gpd.read_parquet(remote["outputs"]["parquet"], storage_options={})
    assert remote["objects"] == local["objects"] > 10
    assert (a.area_px.values == b.area_px.values).all() and a.geometry.geom_equals_exact(b.geometry, 0).all()
    assert remote["input_version"].startswith(f"{tif.stat().st_size}:")  # size + ETag


def _cli(args, env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_object_storage_faults_are_one_clear_line_and_leave_nothing(s3, tmp_path, monkeypatch):
    import s3fs

    from pipeline.runner import check_writable

    tif = tmp_path / "scene.tif"
    write_scene(tif, 160, 160, seed=5)
    bucket = make_bucket(s3)
    # The command: one line naming the URL and the fix, exit 2, nothing written.
    out = f"s3://no-such-bucket-{os.getpid()}/out"
    r = _cli(["segment", str(tif), "--model", "classical", "--tile", "128", "--halo", "32", "--workers", "1",
              "--out", out], {**S3_ENV, "AWS_ENDPOINT_URL": s3}, tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert out in lines[0] and "create the bucket" in lines[0], lines[0]
    # The other faults, through the same check (in-process: each CLI start costs seconds here).
    cases = [({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}, "check AWS_ENDPOINT_URL"),
             ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "HOME": str(tmp_path)}, "AWS_ACCESS_KEY_ID")]
    for env, fix in cases:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.delenv(k, raising=False) if v is None else m.setenv(k, v)
            s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches filesystems; a new environment needs a new one
            with pytest.raises(InputError, match=f"--out s3://{bucket}/out: writing a test object failed.*{fix}"):
                check_writable(f"s3://{bucket}/out", "--out")
    s3fs.S3FileSystem.clear_instance_cache()
    assert "Contents" not in s3_client(s3).list_objects_v2(Bucket=bucket)  # nothing written anywhere
    with pytest.raises(InputError, match="not found"):  # a missing input key names the URL
        from pipeline.io.raster import inspect_raster

        inspect_raster(f"s3://{bucket}/missing.tif")


def test_a_bucket_that_refuses_writes_is_one_line_and_nothing_is_marked_done(tmp_path):
    """A real refusal: moto enforcing IAM, the identity allowed to read and list but not to write. ``segment``
    and ``watch --once`` each stop with one line naming the destination and the fix; nothing is written, and
    no ledger (so nothing is marked done)."""
    import boto3

    setup = 5  # unauthenticated requests to set up with: user, policy, key, bucket, scene
    with moto_s3(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": str(setup)}) as endpoint:
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "setup",
                 "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="reader")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*",
                                                          "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"]}]}
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        bucket = f"ro-{os.getpid()}"
        s3 = boto3.client("s3", **admin)
        s3.create_bucket(Bucket=bucket)
        tif = tmp_path / "scene.tif"
        write_scene(tif, 160, 160, seed=5)
        s3.put_object(Bucket=bucket, Key="incoming/scene.tif", Body=tif.read_bytes())

        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_REGION": "us-east-1"}
        reader = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        assert reader.get_object(Bucket=bucket, Key="incoming/scene.tif")["ContentLength"] == tif.stat().st_size
        out = f"s3://{bucket}/results"
        small = ["--model", "classical", "--tile", "128", "--halo", "32", "--workers", "1"]
        for args in (["segment", f"s3://{bucket}/incoming/scene.tif", "--out", out, *small],
                     ["watch", f"s3://{bucket}/incoming", "--out", out, "--once", *small]):
            r = _cli(args, env, tmp_path)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1, (args[0], r.stderr[-2000:])
            assert f"--out {out}" in lines[0] and "Access Denied" in lines[0], lines[0]
            assert "grant this identity write access to it, or choose another location" in lines[0], lines[0]
            keys = [o["Key"] for o in reader.list_objects_v2(Bucket=bucket).get("Contents", [])]
            assert keys == ["incoming/scene.tif"], keys  # no outputs, no work folder, no ledger, no lease
