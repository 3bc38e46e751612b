"""Storage failures are one line naming the URL, the cause and the fix, through every command that opens a
URL, fast: a refusing endpoint (a closed port on loopback), an unknown host, an unknown scheme; a watch
source that does not exist. 401/403/404 against a real S3 server with IAM enforced are in test_storage.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from servers import ROOT, S3_ENV, free_port, fresh_s3fs

from pipeline.errors import InputError
from pipeline.io import storage
from pipeline.io.storage_errors import cause_of
from pipeline.synthetic import write_scene

CLOSED = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connections are refused
ENV = {**S3_ENV, "AWS_ENDPOINT_URL": CLOSED}


@pytest.fixture
def refused(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    fresh_s3fs()
    yield
    fresh_s3fs()


def test_a_refusing_endpoint_is_one_line_within_seconds(refused):
    t0 = time.perf_counter()
    with pytest.raises(InputError) as e:
        storage.probe("s3://scenes/a.tif", "input")
    took = time.perf_counter() - t0
    msg = str(e.value)
    assert msg.startswith("input s3://scenes/a.tif: reading failed: the storage endpoint") and CLOSED in msg
    assert "refuses connections" in msg and "AWS_ENDPOINT_URL" in msg and "\n" not in msg
    assert took < 30, f"{took:.1f} s: the SDK's default retries are not capped"  # seconds, not a minute


def test_an_unknown_host_and_an_unknown_scheme_have_their_own_lines(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://no-such-host.invalid:9000")
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    fresh_s3fs()
    with pytest.raises(InputError, match=r"the host of http://no-such-host\.invalid:9000 is not found \(DNS\)"):
        storage.probe("s3://scenes/a.tif", "input")
    fresh_s3fs()
    with pytest.raises(InputError, match=r"nope://x/a\.tif: opening failed: no filesystem for this URL's scheme.*install"):
        storage.fs_path("nope://x/a.tif")


def test_causes_are_told_apart():
    assert cause_of(ConnectionRefusedError(111, "refused"))[0] == "refused"
    assert cause_of(PermissionError("Forbidden"))[0] == "forbidden"
    assert cause_of(FileNotFoundError("x"))[0] == "not-found"
    assert cause_of(ImportError("No module named 'gcsfs'"))[0] == "no-backend"


def _cli(args, tmp_path, env=ENV):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))} | {"PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=tmp_path, env=e, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_every_command_that_opens_a_url_gives_one_line_for_a_refusing_endpoint(tmp_path):
    """The endpoint refuses: each command names its URL and the endpoint, exits 2 and writes nothing."""
    scene = tmp_path / "scene.tif"
    write_scene(scene, 120, 120, seed=1)
    cfg = tmp_path / "workdir.yaml"
    cfg.write_text("model: classical\nworkdir: s3://work/tmp\n")
    out = tmp_path / "out"
    cases = {
        "input": ["segment", "s3://scenes/a.tif", "--out", str(out), "--model", "classical"],
        "--out": ["segment", str(scene), "--out", "s3://results/run", "--model", "classical"],
        "work folder": ["segment", str(scene), "--out", str(out), "--config", str(cfg)],
        "evaluate: prediction": ["evaluate", "s3://results/a.parquet", str(scene)],
        "training data": ["train", "--data", "s3://training/dsb", "--out", str(tmp_path / "ckpt"), "--epochs", "1"],
        "watch source": ["watch", "s3://scenes/incoming", "--out", str(out), "--once", "--model", "classical"],
        "--out ": ["watch", str(tmp_path), "--out", "s3://results/run", "--once", "--model", "classical"],
    }
    for what, args in cases.items():
        r = _cli(args, tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, (what, r.stderr[-2000:])
        assert lines[0].startswith(f"seamline: error: {what.strip()}") or f" {what.strip()} " in lines[0], (what, lines[0])
        assert "refuses connections" in lines[0] and CLOSED in lines[0], (what, lines[0])
        assert "Traceback" not in r.stderr
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], list(out.rglob("*"))


def test_watch_on_a_source_that_does_not_exist_fails_and_writes_no_ledger(tmp_path):
    """A mistyped source is not "0 scenes, success": one line, exit 2, no ledger. An empty folder is fine."""
    from pipeline.config import SegmentConfig
    from pipeline.watch import watch_once

    dest = tmp_path / "dest"
    with pytest.raises(InputError, match=r"watch source .*/nope: no such folder; check the path"):
        watch_once(str(tmp_path / "nope"), str(dest), SegmentConfig(model="classical"))
    assert not dest.exists()
    (tmp_path / "empty").mkdir()
    r = watch_once(str(tmp_path / "empty"), str(dest), SegmentConfig(model="classical"))
    assert (r["scenes"], r["processed"]) == (0, 0)


@pytest.mark.slow
def test_watch_cli_on_a_missing_source_exits_2(tmp_path):
    r = _cli(["watch", str(tmp_path / "typo"), "--out", str(tmp_path / "dest"), "--once", "--model", "classical"],
             tmp_path, env={})
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"seamline: error: watch source {tmp_path / 'typo'}: no such folder; check the path (a folder of scenes)"]
    assert not (tmp_path / "dest").exists()
