"""The storage layer: inputs, work folder and outputs on object storage (a real S3 API server on loopback), and
publishing without rename (the JSON summary last, as the commit marker naming every file with size + sha256)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd
import pytest
from servers import ROOT, S3_ENV, make_bucket, moto_s3, s3_client, s3_environment

from pipeline.config import SegmentConfig
from pipeline.errors import InputError
from pipeline.io import storage
from pipeline.io.publish import Staging, verify_outputs
from pipeline.synthetic import write_scene

pytestmark = pytest.mark.slow  # an S3 server (moto)


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
    cases = [({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}, "refuses connections.*AWS_ENDPOINT_URL"),
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


@contextmanager
def iam_enforced_s3(tmp_path):
    """A moto S3 server that enforces IAM from its fourth request on, set up deterministically: exactly three
    unauthenticated requests (no retries) make an admin user with an allow-all policy and its key; everything
    after that — the test's set-up included — is signed and checked against IAM, so which request meets the
    first refusal no longer depends on how many requests (retries, HEADs, listings) came first (#28)."""
    import boto3
    from botocore.config import Config

    once = Config(retries={"max_attempts": 1, "mode": "standard"})
    with moto_s3(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as endpoint:
        boot = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="boot",
                            aws_secret_access_key="boot", config=once)
        boot.create_user(UserName="admin")
        boot.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        k = boot.create_access_key(UserName="admin")["AccessKey"]
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": k["AccessKeyId"],
                 "aws_secret_access_key": k["SecretAccessKey"], "config": once}
        yield endpoint, admin


def _identity(admin: dict, name: str, statements: list[dict]) -> dict[str, str]:
    """An IAM user with these policy statements; returns the AWS_* environment of its access key."""
    import boto3

    iam = boto3.client("iam", **admin)
    iam.create_user(UserName=name)
    if statements:
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": statements}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ENDPOINT_URL": admin["endpoint_url"], "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_REGION": "us-east-1"}


# moto authorises HEAD requests as s3:Head* (AWS counts them as s3:GetObject / s3:ListBucket): without it the
# "read-only" identity of the first version of this test could not read its input either — the refusal it met
# depended on whether moto's unauthenticated start-up allowance was used up yet (#28).
READ_ONLY = [{"Effect": "Allow", "Action": ["s3:Get*", "s3:List*", "s3:Head*"], "Resource": "*"},
             {"Effect": "Deny", "Action": ["s3:Put*", "s3:Delete*", "s3:AbortMultipartUpload"], "Resource": "*"}]


def test_a_bucket_that_refuses_writes_is_one_line_and_nothing_is_marked_done(tmp_path):
    """A real refusal: moto enforcing IAM, the identity allowed to read and list but never to write. ``segment``
    and ``watch --once`` each stop with one line naming the destination and the fix; nothing is written, and
    no ledger (so nothing is marked done)."""
    import boto3

    with iam_enforced_s3(tmp_path) as (endpoint, admin):
        s3 = boto3.client("s3", **admin)
        bucket = f"ro-{os.getpid()}"
        s3.create_bucket(Bucket=bucket)
        tif = tmp_path / "scene.tif"
        write_scene(tif, 160, 160, seed=5)
        s3.put_object(Bucket=bucket, Key="incoming/scene.tif", Body=tif.read_bytes())
        env = _identity(admin, "reader", READ_ONLY)
        out = f"s3://{bucket}/results"
        small = ["--model", "classical", "--workers", "1"]
        for args in (["segment", f"s3://{bucket}/incoming/scene.tif", "--out", out, *small],
                     ["watch", f"s3://{bucket}/incoming", "--out", out, "--once", *small]):
            r = _cli(args, env, tmp_path)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1, (args[0], r.stderr[-2000:])
            assert lines[0].startswith(f"seamline: error: --out {out}: writing a test object failed: this identity may "
                                       "not write it (AccessDenied); grant this identity write access"), lines[0]
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
            assert keys == ["incoming/scene.tif"], keys  # no outputs, no work folder, no ledger, no lease


def test_unreadable_missing_and_rejected_inputs_each_have_their_line(tmp_path):
    """403 (an identity with no S3 rights), 404 (a key that is not there) and a bucket that does not exist:
    each its own line naming the input, never "install a backend"."""
    import boto3

    with iam_enforced_s3(tmp_path) as (endpoint, admin):
        s3 = boto3.client("s3", **admin)
        bucket = f"in-{os.getpid()}"
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="a.tif", Body=b"II*\x00")
        nobody = _identity(admin, "nobody", [])
        reader = _identity(admin, "reader", READ_ONLY)
        out = str(tmp_path / "out")
        cases = [(nobody, f"s3://{bucket}/a.tif", "this identity may not read it"),
                 (reader, f"s3://{bucket}/missing.tif", "reading failed: not found; check the URL"),
                 (reader, f"s3://nobucket-{os.getpid()}/a.tif", "reading failed:")]
        for env, url, expect in cases:
            r = _cli(["segment", url, "--out", out, "--model", "classical"], env, tmp_path)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
            assert lines[0].startswith(f"seamline: error: input {url}: ") and expect in lines[0], lines[0]
            assert "install" not in lines[0], lines[0]
        assert not os.path.exists(out)
