"""``seamline watch``: each scene once per version, a ledger DuckDB and pandas read, failed scenes retried up to a
limit without blocking the others, changed scenes redone, and two watchers on one DEST never doing a scene
twice — against a real S3 API server (moto, its own process) on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from servers import ROOT, make_bucket, s3_client, s3_environment

from pipeline.config import SegmentConfig
from pipeline.io import storage
from pipeline.lease import Lease
from pipeline.synthetic import write_scene
from pipeline.watch import read_ledger, watch_once

pytestmark = pytest.mark.slow  # an S3 server (moto) and watcher processes

# Tile and halo left unset, as users leave them: the second round must still find every scene done (#19).
CFG = SegmentConfig(model="classical", workers=1, label_image=False, qupath_geojson=False)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback; the standard AWS variables point this process at it (no project setting)."""
    with s3_environment(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def client(s3):
    from pipeline.stages.dispatch import dask_client

    with dask_client(workers=1, threads_per_worker=1) as c:
        yield c


def _upload_scenes(s3, tmp_path, bucket, names_seeds, size=(200, 180)):
    c = s3_client(s3)
    for name, seed in names_seeds:
        p = tmp_path / name
        write_scene(p, *size, seed=seed)
        c.upload_file(str(p), bucket, f"incoming/{name}")


def test_watch_once_per_version_with_ledger_retries_and_changes(s3, client, tmp_path):
    import duckdb

    bucket = make_bucket(s3)
    _upload_scenes(s3, tmp_path, bucket, [("a.tif", 1), ("b.tif", 2)])
    s3_client(s3).put_object(Bucket=bucket, Key="incoming/broken.tif", Body=b"II*\x00 not really a tiff")
    s3_client(s3).put_object(Bucket=bucket, Key="incoming/notes.txt", Body=b"not a raster")
    src, dest = f"s3://{bucket}/incoming", f"s3://{bucket}/results"

    r1 = watch_once(src, dest, CFG, client=client, max_attempts=2)
    assert (r1["scenes"], r1["processed"], r1["failed"]) == (3, 2, 1)
    led = read_ledger(dest)
    assert set(led.columns) >= {"scene", "version", "status", "error", "objects", "started_at", "seconds", "attempts"}
    bad = led[led.scene.str.endswith("broken.tif")].iloc[0]
    assert bad.status == "failed" and "\n" not in bad.error and "broken.tif" in bad.error
    assert (led[led.status == "done"].objects > 5).all()
    # DuckDB reads the same ledger (through a local copy of the object: no httpfs extension download here).
    local = tmp_path / "ledger.parquet"
    s3_client(s3).download_file(bucket, "results/_seamline/ledger.parquet", str(local))
    assert duckdb.sql(f"select count(*) from '{local}' where status = 'done'").fetchone()[0] == 2

    r2 = watch_once(src, dest, CFG, client=client, max_attempts=2)  # nothing new; the bad one retried once more
    assert (r2["processed"], r2["skipped_done"], r2["failed"]) == (0, 2, 1)
    r3 = watch_once(src, dest, CFG, client=client, max_attempts=2)  # the retry limit is reached: left alone
    assert (r3["processed"], r3["failed"], r3["gave_up"]) == (0, 0, 1)

    _upload_scenes(s3, tmp_path, bucket, [("a.tif", 7)])  # a new version of a.tif
    r4 = watch_once(src, dest, CFG, client=client, max_attempts=2)
    assert r4["processed"] == 1 and r4["results"][0]["scene"].endswith("/a.tif")
    led = read_ledger(dest)
    assert len(led[led.scene.str.endswith("/a.tif")]) == 2  # one row per version
    s = json.loads(s3_client(s3).get_object(Bucket=bucket, Key="results/a.json")["Body"].read())
    assert s["input_version"] == led[led.scene.str.endswith("/a.tif")].sort_values("started_at").version.iloc[-1]

    # An output set whose JSON disagrees with its files is not trusted: the scene is done again.
    s3_client(s3).put_object(Bucket=bucket, Key="results/b.parquet", Body=b"truncated")
    r5 = watch_once(src, dest, CFG, client=client, max_attempts=2)
    assert r5["processed"] == 1 and r5["results"][0]["scene"].endswith("/b.tif")


def test_lease_blocks_while_alive_and_expires_when_its_holder_dies(s3, tmp_path):
    """Expiry is judged by a clock the test advances (a synchronisation point, not a sleep): a machine slow
    enough to take longer than a short time-to-live between two calls can no longer flip the outcome."""
    bucket = make_bucket(s3)
    now = [time.time()]
    for url in (f"s3://{bucket}/leases/x.json", str(tmp_path / "leases" / "x.json")):
        a, b = (Lease(url, ttl_s=600, settle_s=0.2, clock=lambda: now[0]) for _ in range(2))
        assert a.acquire() and not b.acquire()
        now[0] += 599  # alive: renewed or not, a lease within its time to live blocks the other watcher
        assert not b.acquire()
        a._stop.set()  # the holder "dies": no more renewals
        now[0] += 2  # ... past its expiry
        assert b.acquire() and not a.still_held()
        b.release()
        assert Lease(url).acquire()


def test_two_watchers_on_one_dest_never_do_a_scene_twice(s3, tmp_path):
    bucket = make_bucket(s3)
    _upload_scenes(s3, tmp_path, bucket, [(f"s{i}.tif", i) for i in range(4)], size=(160, 150))
    src, dest = f"s3://{bucket}/incoming", f"s3://{bucket}/results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipeline.cli", "watch", src, "--out", dest, "--once", "--model", "classical",
           "--workers", "1"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    done_lines = [line for o in outs for line in o[0].splitlines() if line.endswith("objects)")]
    c = s3_client(s3)
    records = [json.loads(c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
               for o in c.list_objects_v2(Bucket=bucket, Prefix="results/_seamline/records/").get("Contents", [])]
    assert sorted(line.split(":")[1].rsplit("/", 1)[-1] for line in done_lines) == [f"s{i}.tif" for i in range(4)], \
        "\n---\n".join(o[0] + o[1][-3000:] for o in outs) + "\nrecords: " + json.dumps(
            [{k: r.get(k) for k in ("scene", "holder", "started_at", "finished_at", "status")} for r in records])
    led = read_ledger(dest)
    assert len(led) == 4 and (led.status == "done").all() and (led.attempts == 1).all()
    assert not [o for o in s3_client(s3).list_objects_v2(Bucket=bucket, Prefix="results/_seamline/leases/").get("Contents", [])]


def test_bad_cron_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "watch", str(tmp_path), "--out", str(tmp_path / "o"),
                        "--cron", "every fifteen minutes"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=os.environ | {"PYTHONPATH": str(ROOT)})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--cron 'every fifteen minutes'" in lines[0] and "*/15" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


def test_a_briefly_unreadable_lease_is_still_held(tmp_path):
    """A transient read failure (here: the object caught mid-rewrite) is retried, not read as a lost lease —
    otherwise the holder that just finished a scene skips its done-record and another watcher redoes it."""
    import threading

    lease = Lease(str(tmp_path / "leases" / "x.json"), ttl_s=60)
    assert lease.acquire()
    try:
        good = (tmp_path / "leases" / "x.json").read_bytes()
        (tmp_path / "leases" / "x.json").write_bytes(good[: len(good) // 2])  # torn: not JSON for a moment
        threading.Timer(0.1, (tmp_path / "leases" / "x.json").write_bytes, [good]).start()
        assert lease.still_held()
    finally:
        lease.release()
    assert not (tmp_path / "leases" / "x.json").exists()


def test_a_lease_created_by_another_in_between_is_never_overwritten(tmp_path, monkeypatch):
    """The race behind a scene done twice: our create fails (someone holds it), our read finds nothing (it was
    released in between), our second create fails too (someone else took it meanwhile). The lease is theirs:
    acquire must say no and leave their token — it used to fall through to an unconditional write."""
    url = str(tmp_path / "leases" / "s.json")
    other = Lease(url)
    assert other.acquire()
    mine = Lease(url)
    real_read, calls = mine._read, []

    def first_read_finds_nothing(*a, **k):
        calls.append(1)
        return None if len(calls) == 1 else real_read(*a, **k)

    monkeypatch.setattr(mine, "_read", first_read_finds_nothing)
    assert not mine.acquire()
    assert json.loads(open(url).read())["token"] == other.token and other.still_held()
    other.release()


def test_two_creates_that_both_succeed_still_give_one_holder(s3, monkeypatch):
    """moto's server checks ``If-None-Match`` and then writes, without a lock: two racing conditional creates can
    both succeed (what made the two-watchers test do a scene twice under load). The read-back after ``settle``
    still picks one holder: the last writer."""
    import threading

    url = f"s3://{make_bucket(s3)}/leases/s.json"
    a, b = Lease(url, settle_s=0.0), Lease(url, settle_s=0.0)
    a_wrote, b_wrote = threading.Event(), threading.Event()

    # Explicit synchronisation points, not delays: a's create "succeeds" first, then b's does too (the
    # non-atomic store), and a reads back only after b wrote — the race the read-back must settle, forced.
    def create_a():
        storage.write_bytes(a.url, a._body())
        a_wrote.set()
        return True

    def create_b():
        assert a_wrote.wait(60)
        storage.write_bytes(b.url, b._body())
        b_wrote.set()
        return True

    read_a = a._read

    def read_after_b(tries=4):
        assert b_wrote.wait(60)
        return read_a(tries)

    monkeypatch.setattr(a, "_create_if_absent", create_a)
    monkeypatch.setattr(b, "_create_if_absent", create_b)
    monkeypatch.setattr(a, "_read", read_after_b)
    got = {}
    threads = [threading.Thread(target=lambda lease=lease, k=k: got.__setitem__(k, lease.acquire())) for k, lease in (("a", a), ("b", b))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert got == {"a": False, "b": True} and b.still_held() and not a.still_held()
    b.release()


def test_a_scene_whose_lease_was_taken_while_it_ran_is_not_reported_done(s3, tmp_path):
    """When the lease is lost mid-run (it expired, or the store let another take it) the other holder's record
    counts: this watch writes none, and says so instead of claiming the scene."""
    bucket = make_bucket(s3)
    _upload_scenes(s3, tmp_path, bucket, [("a.tif", 1)])
    src, dest = f"s3://{bucket}/incoming", f"s3://{bucket}/results"

    def process_while_another_takes_the_lease(url, out, cfg, client):
        from pipeline.runner import segment_scene

        (lease_key,) = [o["Key"] for o in s3_client(s3).list_objects_v2(Bucket=bucket, Prefix="results/_seamline/leases/")["Contents"]]
        s3_client(s3).put_object(Bucket=bucket, Key=lease_key, Body=json.dumps({"token": "other", "expires": time.time() + 60}))
        return segment_scene(url, out, cfg, client=client)

    r = watch_once(src, dest, CFG, process=process_while_another_takes_the_lease)
    assert (r["processed"], r["failed"], r["lost_lease"]) == (0, 0, 1) and r["results"][0]["status"] == "lost-lease"
    assert not s3_client(s3).list_objects_v2(Bucket=bucket, Prefix="results/_seamline/records/").get("Contents")


def test_an_unreadable_record_leaves_the_scene_alone(s3, tmp_path):
    """A record that exists but cannot be read is not "no record": the scene is left for the next round (with
    a warning naming the file) instead of being done a second time."""
    from pipeline.settings import resolve_settings
    from pipeline.watch import _scene_id, list_scenes

    bucket = make_bucket(s3)
    _upload_scenes(s3, tmp_path, bucket, [("a.tif", 1)])
    src, dest = f"s3://{bucket}/incoming", f"s3://{bucket}/results"
    sid = _scene_id(list_scenes(src)[0], resolve_settings(CFG).fingerprint)
    s3_client(s3).put_object(Bucket=bucket, Key=f"results/_seamline/records/{sid}.json", Body=b'{"status": "do')
    r = watch_once(src, dest, CFG, process=lambda *a: pytest.fail("processed a scene whose record it could not read"))
    assert (r["processed"], r["unreadable"]) == (0, 1)


def test_published_outputs_without_a_record_are_adopted_not_made_again(s3, tmp_path):
    """A holder that stopped between publishing and recording (or a record not readable in time) leaves current
    outputs without a done record: the next watch records them as done instead of processing the scene again."""
    from pipeline.settings import resolve_settings
    from pipeline.watch import _scene_id, list_scenes

    bucket = make_bucket(s3)
    _upload_scenes(s3, tmp_path, bucket, [("a.tif", 1)])
    src, dest = f"s3://{bucket}/incoming", f"s3://{bucket}/results"
    r1 = watch_once(src, dest, CFG)
    assert r1["processed"] == 1
    sid = _scene_id(list_scenes(src)[0], resolve_settings(CFG).fingerprint)
    for key in (f"results/_seamline/records/{sid}.json", "results/_seamline/ledger.parquet"):
        s3_client(s3).delete_object(Bucket=bucket, Key=key)
    r2 = watch_once(src, dest, CFG, process=lambda *a: pytest.fail("made current outputs a second time"))
    assert (r2["processed"], r2["skipped_done"]) == (0, 1)
    led = read_ledger(dest)
    assert len(led) == 1 and led.status.iloc[0] == "done" and led.objects.iloc[0] == r1["results"][0]["objects"]


def test_totals_line_names_every_count_the_cli_and_the_flow_report():
    from pipeline.watch import totals_line

    r = {"scenes": 5, "processed": 1, "failed": 1, "skipped_done": 1, "skipped_leased": 1, "gave_up": 0,
         "lost_lease": 1, "unreadable": 0}
    line = totals_line(r)
    assert line.startswith("5 scenes: 1 processed, 1 failed, 1 already done, 1 held by another watch")
    assert "1 lost their lease" in line and "unreadable" not in line
    assert "unreadable record" in totals_line(r | {"unreadable": 2, "lost_lease": 0})
