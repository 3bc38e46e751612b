"""``seamline watch SOURCE --out DEST``: process every raster under a folder or bucket prefix exactly once per
version, as plain functions (``flows/watch.py`` only wires :func:`watch_once` into a scheduled Prefect flow).

A scene's *version* is its key + size + ETag (mtime where the store has no ETag) + the fingerprint of the
settings that change results (:mod:`pipeline.settings`, the same value the run publishes in its summary): a
changed file or other settings make a new version, processed again.

State lives under ``DEST/_seamline/`` and nowhere else, so any number of watch processes on any machines
share it through the store itself:

* ``records/<id>.json`` — one object per (scene, version): status (``done`` | ``failed``), one-line error,
  attempts, object count, timings. Written only by the lease holder, so never a lost update.
* ``leases/<id>.json`` — the lease (:class:`pipeline.lease.Lease`) held while a scene is processed.
* ``ledger.parquet`` — all records as one table for DuckDB and pandas, rebuilt from the records after each
  scene (an atomic object write).

A scene is done when its published outputs verify (the JSON commit marker and the files it names,
:func:`pipeline.io.publish.verify_outputs`) and were made from this version with these settings; a done
record whose outputs do not verify is processed again, and verified outputs without a done record are
recorded (adopted), never made twice. A failed scene is retried on later runs up to ``max_attempts`` and
never blocks the others. A scene the quality gate refused (``quality.fail_on``, :class:`~pipeline.errors.QualityGateError`)
is recorded as failed with its verdict (``quality``) and ``retry: false``: the same version with the same
settings would be refused again, so it is not retried until the scene or the settings change (a new record).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from pipeline.config import SegmentConfig
from pipeline.diff import diff_runs
from pipeline.errors import InputError, QualityGateError
from pipeline.io import storage
from pipeline.io.publish import verify_outputs
from pipeline.io.storage import stem_of
from pipeline.lease import Lease
from pipeline.runner import StageWrapper, check_writable, segment_scene
from pipeline.settings import resolve_settings
from pipeline.stages.dispatch import cluster_client
from pipeline.stages.previous import find_previous

__all__ = ["RASTER_SUFFIXES", "list_scenes", "watch_once", "read_ledger", "LEDGER_COLUMNS", "totals_line"]

log = logging.getLogger("seamline")

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".svs", ".ndpi", ".scn", ".mrxs", ".bif")
LEDGER_COLUMNS = ["scene", "version", "fingerprint", "status", "error", "quality", "attempts", "objects", "started_at",
                  "finished_at", "seconds", "summary", "holder", "changes", "changed", "diff_against"]


@dataclass(frozen=True)
class Scene:
    url: str
    version: str

    @property
    def stem(self) -> str:
        return stem_of(self.url)


def list_scenes(source: str) -> list[Scene]:
    """Rasters under a folder or prefix (recursively), with their versions from one listing (no HEAD each).

    A source that does not exist (a mistyped folder, a prefix with nothing under it, a bucket this identity
    cannot list) is one line, never "0 scenes": a scheduled watch on a wrong path would otherwise report
    success on every run and process nothing. An existing, empty folder is 0 scenes."""
    fs, root = storage.fs_path(source)
    fs.invalidate_cache(root)
    try:
        if storage.is_local(source):
            if not os.path.isdir(root):
                why = "is a file, expected a folder" if os.path.exists(root) else "no such folder"
                raise InputError(f"watch source {source}: {why}; check the path (a folder of scenes)")
        elif not fs.exists(root):
            raise FileNotFoundError(f"no such folder or prefix: {source}")
        found = fs.find(root, detail=True)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - storage backends raise their own types; storage_error makes one line
        raise storage.storage_error(source, exc, "listing", "watch source") from None
    scenes = []
    for path, meta in sorted(found.items()):
        if meta.get("type") == "directory" or not path.lower().endswith(RASTER_SUFFIXES):
            continue
        if storage.is_local(source):  # the same version string the run records (pipeline.io.storage.version_of)
            scenes.append(Scene(path, storage.version_of(path)))
            continue
        tag = meta.get("ETag") or meta.get("etag") or meta.get("md5Hash") or meta.get("mtime") or meta.get("LastModified")
        scenes.append(Scene(fs.unstrip_protocol(path), f"{meta.get('size')}:{str(tag).strip(chr(34))}"))
    return scenes


def _scene_id(scene: Scene, fp: str) -> str:
    return hashlib.sha256(f"{scene.url}|{scene.version}|{fp}".encode()).hexdigest()[:24]


def _state(dest: str, *parts: str) -> str:
    return storage.join(dest, "_seamline", *parts)


class StateUnreadable(RuntimeError):
    """A scene's record exists but could not be read (after retries): its state is unknown this round."""


def _read_record(dest: str, sid: str) -> dict | None:
    """The scene's record; None when there is none. A read that keeps failing (after the retries of
    :func:`pipeline.io.storage.read_json`) raises :class:`StateUnreadable` — never read as "no record", which
    would have the scene done a second time."""
    url = _state(dest, "records", f"{sid}.json")
    try:
        return storage.read_json(url)
    except (OSError, ValueError) as exc:
        raise StateUnreadable(f"{url}: unreadable ({one_line(exc)}); the scene is left for the next round") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _current_outputs(rec: dict | None, dest: str, scene: Scene, fp: str) -> dict | None:
    """The published summary when the outputs are there, agree with their JSON and were made from this version
    of the scene with these settings; else None. The outputs decide whether a scene is done, not the record: a
    record alone is not trusted (files can be deleted or replaced), and current outputs without a done record
    (a holder that stopped between publishing and recording) are adopted rather than made a second time."""
    s = verify_outputs(dest, scene.stem)
    ok = s is not None and s.get("input_version") == scene.version and s.get("settings_fingerprint") == fp
    if _recorded_done(rec) and not ok:
        why = ("its outputs are missing or disagree with their JSON" if s is None else
               f"version {s.get('input_version')} / settings {s.get('settings_fingerprint')} differ from "
               f"{scene.version} / {fp}")
        log.warning("%s: recorded as done, but %s: processing it again", scene.url, why)
    return s if ok else None


def _recorded_done(rec: dict | None) -> bool:
    return bool(rec) and rec.get("status") == "done"


def _new_record(scene: Scene, fp: str, rec: dict | None, lease: Lease) -> dict:
    """A record of this attempt at ``scene`` by the holder of ``lease`` (status and results still to fill)."""
    return {"scene": scene.url, "version": scene.version, "fingerprint": fp,
            "attempts": int((rec or {}).get("attempts", 0)) + 1, "started_at": _now(), "holder": lease.token,
            "objects": None, "error": None, "summary": None}


def _adopt(summary: dict, scene: Scene, sid: str, fp: str, dest: str, rec: dict | None, lease: Lease) -> None:
    """Record current outputs published without a done record (see :func:`_current_outputs`) as done."""
    log.warning("%s: current outputs found without a done record: recording them as done, not processing again",
                scene.url)
    new = _new_record(scene, fp, rec, lease)
    new.update(status="done", finished_at=new["started_at"], seconds=0.0, objects=summary.get("objects"),
               summary=summary["outputs"]["json"], quality=(summary.get("quality") or {}).get("verdict"))
    if lease.still_held():
        storage.write_text(_state(dest, "records", f"{sid}.json"), json.dumps(new))
        write_ledger(dest)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]


def watch_once(source: str, dest: str, cfg: SegmentConfig, client=None, max_attempts: int = 3,
               lease_s: float = 3600.0, task: StageWrapper | None = None,
               process: Callable[..., dict] | None = None) -> dict[str, Any]:
    """Process what is new or changed under ``source`` once; returns counts and the per-scene results.

    Each scene runs through :func:`pipeline.runner.segment_scene` (the one runner; ``task`` wraps its stages,
    as the Prefect flow does). ``process(url, dest, cfg, client)`` replaces it in tests. Without a ``client``,
    a cluster is started from ``cfg`` when the first scene needs processing (a round with nothing new starts
    none).
    """
    settings = resolve_settings(cfg)  # the fingerprint the runs publish: the same function, the same value
    cfg = settings.cfg
    process = process or (lambda url, out, c, cl: segment_scene(url, out, c, client=cl, force=True, task=task))
    scenes = list_scenes(source)  # a missing or unlistable source stops here: nothing written, no ledger
    check_writable(dest, "--out")
    fp = settings.fingerprint
    result: dict[str, Any] = {"source": source, "dest": dest, "scenes": len(scenes), "processed": 0, "failed": 0,
                              "skipped_done": 0, "skipped_leased": 0, "gave_up": 0, "refused": 0, "lost_lease": 0,
                              "unreadable": 0,
                              "results": []}
    with contextlib.ExitStack() as stack:
        clients = [client] if client is not None else []

        def run(url: str) -> dict:
            if not clients:
                clients.append(stack.enter_context(cluster_client(cfg)))
            return process(url, dest, cfg, clients[0])

        for scene in scenes:
            try:
                _watch_scene(scene, fp, dest, run, max_attempts, lease_s, result, cfg.diff == "previous")
            except StateUnreadable as exc:
                result["unreadable"] += 1
                log.warning("%s", exc)
    return result


def _watch_scene(scene: Scene, fp: str, dest: str, run: Callable[[str], dict], max_attempts: int,
                 lease_s: float, result: dict[str, Any], diff: bool = False) -> None:
    """One scene of :func:`watch_once`: skip it, adopt its outputs, or process it under its lease."""
    sid = _scene_id(scene, fp)
    rec = _read_record(dest, sid)
    if _recorded_done(rec) and _current_outputs(rec, dest, scene, fp):
        result["skipped_done"] += 1
        return
    if rec and rec.get("status") == "failed" and rec.get("retry") is False:
        result["refused"] += 1  # the quality gate's refusal is final for this version and these settings
        return
    if rec and rec.get("status") == "failed" and int(rec.get("attempts", 0)) >= max_attempts:
        result["gave_up"] += 1
        return
    lease = Lease(_state(dest, "leases", f"{sid}.json"), ttl_s=lease_s)
    if not lease.acquire():
        result["skipped_leased"] += 1
        return
    with lease:
        rec = _read_record(dest, sid)  # another process may have finished it before we got the lease
        summary = _current_outputs(rec, dest, scene, fp)
        if summary is not None:
            result["skipped_done"] += 1
            if not _recorded_done(rec):
                _adopt(summary, scene, sid, fp, dest, rec, lease)
            return
        _run_one(scene, sid, fp, dest, run, rec, lease, result, diff)
    write_ledger(dest)


def _run_one(scene: Scene, sid: str, fp: str, dest: str, run: Callable[[str], dict], rec, lease, result,
             diff: bool = False) -> None:
    t0 = time.perf_counter()
    new = _new_record(scene, fp, rec, lease)
    try:
        summary = run(scene.url)
        new.update(status="done", objects=int(summary.get("objects", 0)), summary=summary["outputs"]["json"],
                   quality=(summary.get("quality") or {}).get("verdict"))
    except QualityGateError as exc:  # refused to publish: final for this version and these settings
        new.update(status="failed", error=one_line(exc), quality=exc.verdict, retry=False)
        log.warning("%s: refused: %s", scene.url, new["error"])
    except Exception as exc:  # noqa: BLE001 - a bad scene is recorded and never blocks the others
        new.update(status="failed", error=one_line(exc))
        log.warning("%s: failed: %s", scene.url, new["error"])
    new.update(finished_at=_now(), seconds=round(time.perf_counter() - t0, 3))
    if diff and new["status"] == "done" and lease.still_held():
        new.update(_diff_previous(dest, sid, summary, new["finished_at"]))
    if lease.still_held():
        storage.write_text(_state(dest, "records", f"{sid}.json"), json.dumps(new))
        result["processed" if new["status"] == "done" else "failed"] += 1
    else:  # lost the lease while working (it expired, or the store let another take it): their record wins
        new.update(status="lost-lease", error="another watch holds this scene's lease now; its record counts")
        result["lost_lease"] += 1
        log.warning("%s: %s", scene.url, new["error"])
    result["results"].append(new)


def _diff_previous(dest: str, sid: str, summary: dict, finished_at: str) -> dict[str, Any]:
    """``diff: previous``: diff a new version against the last done version of its scene (the same stem, else a
    footprint it overlaps: :func:`pipeline.stages.previous.find_previous`), publishing ``<stem>.changes.*`` in
    DEST, then keep this version's objects and summary under ``DEST/_seamline/history/<id>/`` for the next one
    (a new version overwrites ``<stem>.parquet``). Returns the ledger's ``changes`` (counts per change, JSON),
    ``changed`` and ``diff_against``; a diff that fails is a warning, never a failed scene."""
    hist = _state(dest, "history")
    out: dict[str, Any] = {}
    try:
        done = []
        for name in storage.listdir(hist):
            if name == sid:
                continue
            prev = storage.read_json(storage.join(hist, name, "summary.json"))
            if prev:
                done.append({**prev, "_objects": storage.join(hist, name, "objects.parquet")})
        prev = find_previous(summary, done)
        if prev is not None:
            d = diff_runs(prev["_objects"], summary["outputs"]["parquet"], dest)
            out = {"changes": json.dumps(d["counts"]), "changed": int(d["changed"]),
                   "diff_against": f"{prev.get('input')}@{prev.get('input_version')}"}
            log.info("%s: %d changed since %s", summary.get("input"), d["changed"], out["diff_against"])
        storage.copy(summary["outputs"]["parquet"], storage.join(hist, sid, "objects.parquet"))
        storage.write_text(storage.join(hist, sid, "summary.json"),
                           json.dumps({**summary, "finished_at": finished_at}, default=str))
    except Exception as exc:  # noqa: BLE001 - the scene is done; a diff that fails is reported, not fatal
        log.warning("%s: diff against the previous version failed: %s", summary.get("input"), one_line(exc))
        out.setdefault("diff_against", f"failed: {one_line(exc)}")
    return out


def totals_line(r: dict) -> str:
    """One line of a round's totals (``watch_once``'s result), for the CLI and the Prefect flow alike."""
    line = (f"{r['scenes']} scenes: {r['processed']} processed, {r['failed']} failed, {r['skipped_done']} already done, "
            f"{r['skipped_leased']} held by another watch, {r['gave_up']} failed too often")
    if r.get("refused"):
        line += f", {r['refused']} refused by the quality gate (not retried until the scene or the settings change)"
    if r["lost_lease"]:
        line += f", {r['lost_lease']} lost their lease while running"
    if r["unreadable"]:
        line += f", {r['unreadable']} with an unreadable record (left for the next round)"
    return line


def read_records(dest: str) -> list[dict]:
    folder = _state(dest, "records")
    out = []
    for name in storage.listdir(folder):
        if name.endswith(".json"):
            try:
                out.append(json.loads(storage.read_text(storage.join(folder, name))))
            except (OSError, ValueError):
                continue
    return out


def write_ledger(dest: str) -> str:
    """``DEST/_seamline/ledger.parquet`` from all records (one row per scene version), as one atomic object."""
    import pyarrow as pa

    recs = sorted(read_records(dest), key=lambda r: (r.get("scene", ""), r.get("started_at", "")))
    types = {"attempts": pa.int32(), "objects": pa.int64(), "seconds": pa.float64(), "changed": pa.int64()}
    table = pa.table({c: pa.array([r.get(c) for r in recs], types.get(c, pa.string())) for c in LEDGER_COLUMNS})
    url = _state(dest, "ledger.parquet")
    storage.write_parquet(url, table)
    return url


def read_ledger(dest: str):
    """The ledger as a pandas DataFrame (empty with the columns when nothing ran yet)."""
    import pandas as pd

    url = _state(dest, "ledger.parquet")
    if not storage.exists(url):
        return pd.DataFrame(columns=LEDGER_COLUMNS)
    return storage.read_parquet(url).to_pandas()
