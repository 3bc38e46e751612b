"""``seamline watch SOURCE --out DEST``: process every raster under a folder or bucket prefix exactly once per
version, as plain functions (``flows/watch.py`` only wires :func:`watch_once` into a scheduled Prefect flow).

A scene's *version* is its key + size + ETag (mtime where the store has no ETag) + the fingerprint of the
settings that change results: a changed file or other settings make a new version, processed again.

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
never blocks the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from pipeline import __version__
from pipeline.config import SegmentConfig
from pipeline.io import storage
from pipeline.io.publish import summary_url, verify_outputs
from pipeline.lease import Lease

__all__ = ["RASTER_SUFFIXES", "list_scenes", "settings_fingerprint", "watch_once", "read_ledger", "LEDGER_COLUMNS"]

log = logging.getLogger("seamline")

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".svs", ".ndpi", ".scn", ".mrxs", ".bif")
LEDGER_COLUMNS = ["scene", "version", "fingerprint", "status", "error", "attempts", "objects", "started_at",
                  "finished_at", "seconds", "summary", "holder"]


@dataclass(frozen=True)
class Scene:
    url: str
    version: str

    @property
    def stem(self) -> str:
        from pipeline.io.raster import SceneInfo

        return SceneInfo(self.url, 1, 1, 1, "uint8", None, (1, 0, 0, 0, 1, 0), None).stem


def list_scenes(source: str) -> list[Scene]:
    """Rasters under a folder or prefix (recursively), with their versions from one listing (no HEAD each)."""
    fs, root = storage.fs_path(source)
    fs.invalidate_cache(root)
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    except Exception as exc:
        raise storage.storage_error(source, exc, "listing") from None
    if not found and not storage.is_local(source) and not fs.exists(root):
        raise storage.storage_error(source, FileNotFoundError(f"no such folder or prefix: {source}"), "listing")
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


def settings_fingerprint(cfg: SegmentConfig) -> str:
    """The settings that change results (not workers, scheduler or paths), and the Seamline version."""
    keep = cfg.model_dump(exclude={"workers", "threads_per_worker", "scheduler", "memory_limit", "device",
                                   "keep_intermediate", "workdir", "batch_size", "tiles_per_task"})
    return hashlib.sha256(json.dumps([keep, __version__], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _scene_id(scene: Scene, fp: str) -> str:
    return hashlib.sha256(f"{scene.url}|{scene.version}|{fp}".encode()).hexdigest()[:24]


def _state(dest: str, *parts: str) -> str:
    return storage.join(dest, "_seamline", *parts)


class StateUnreadable(RuntimeError):
    """A scene's record exists but could not be read (after retries): its state is unknown this round."""


def _read_record(dest: str, sid: str, tries: int = 4) -> dict | None:
    """The scene's record; None when there is none. A failed read is retried, and one that keeps failing raises
    :class:`StateUnreadable` — never read as "no record", which would have the scene done a second time."""
    url = _state(dest, "records", f"{sid}.json")
    for i in range(tries):
        try:
            return json.loads(storage.read_text(url))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            if i + 1 == tries:
                raise StateUnreadable(f"{url}: unreadable ({one_line(exc)}); the scene is left for the next round") from None
            time.sleep(0.2 * (i + 1))
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_done(rec: dict | None, dest: str, scene: Scene, fp: str) -> bool:
    """Done when the published outputs are there, agree with their JSON and were made from this version of the
    scene with these settings. The outputs decide, not the record: a record alone is not trusted (files can be
    deleted or replaced), and current outputs without a done record (a holder that stopped between publishing
    and recording, or a record not readable in time) are adopted rather than made a second time."""
    s = verify_outputs(dest, scene.stem)
    ok = s is not None and s.get("input_version") == scene.version and s.get("settings_fingerprint") == fp
    recorded = bool(rec) and rec.get("status") == "done"
    if recorded and not ok:
        why = ("its outputs are missing or disagree with their JSON" if s is None else
               f"version {s.get('input_version')} / settings {s.get('settings_fingerprint')} differ from "
               f"{scene.version} / {fp}")
        log.warning("%s: recorded as done, but %s: processing it again", scene.url, why)
    return ok


def _adopt(scene: Scene, sid: str, fp: str, dest: str, rec: dict | None, lease: Lease) -> None:
    """Write the done record of outputs published without one (see :func:`_is_done`), so the ledger has them."""
    s = verify_outputs(dest, scene.stem) or {}
    log.warning("%s: current outputs found without a done record: recording them as done, not processing again",
                scene.url)
    new = {"scene": scene.url, "version": scene.version, "fingerprint": fp, "status": "done",
           "attempts": int((rec or {}).get("attempts", 0)) + 1, "started_at": _now(), "finished_at": _now(),
           "seconds": 0.0, "holder": lease.token, "objects": s.get("objects"), "error": None,
           "summary": summary_url(dest, scene.stem)}
    if lease.still_held():
        storage.write_text(_state(dest, "records", f"{sid}.json"), json.dumps(new))
        write_ledger(dest)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]


def watch_once(source: str, dest: str, cfg: SegmentConfig, client=None, max_attempts: int = 3,
               lease_s: float = 3600.0, process: Callable[..., dict] | None = None) -> dict[str, Any]:
    """Process what is new or changed under ``source`` once; returns counts and the per-scene results.

    ``process(url, dest, cfg, client)`` runs one scene and returns its published summary (default
    :func:`pipeline.runner.segment_scene`; the Prefect flow passes one that runs each stage as a task).
    """
    from pipeline.runner import check_writable, segment_scene

    process = process or (lambda url, out, c, cl: segment_scene(url, out, c, client=cl))
    check_writable(dest, "--out")
    fp = settings_fingerprint(cfg)
    scenes = list_scenes(source)
    result: dict[str, Any] = {"source": source, "dest": dest, "scenes": len(scenes), "processed": 0, "failed": 0,
                              "skipped_done": 0, "skipped_leased": 0, "gave_up": 0, "lost_lease": 0, "unreadable": 0,
                              "results": []}
    records: dict[str, dict] = {}
    for scene in scenes:
        sid = _scene_id(scene, fp)
        try:
            rec = _read_record(dest, sid)
        except StateUnreadable as exc:
            result["unreadable"] += 1
            log.warning("%s", exc)
            continue
        if rec and rec.get("status") == "done" and _is_done(rec, dest, scene, fp):
            result["skipped_done"] += 1
            continue
        if rec and rec.get("status") == "failed" and int(rec.get("attempts", 0)) >= max_attempts:
            result["gave_up"] += 1
            continue
        lease = Lease(_state(dest, "leases", f"{sid}.json"), ttl_s=lease_s)
        if not lease.acquire():
            result["skipped_leased"] += 1
            continue
        with lease:
            try:
                rec = _read_record(dest, sid)  # another process may have finished it before we got the lease
            except StateUnreadable as exc:
                result["unreadable"] += 1
                log.warning("%s", exc)
                continue
            if _is_done(rec, dest, scene, fp):
                result["skipped_done"] += 1
                if not rec or rec.get("status") != "done":
                    _adopt(scene, sid, fp, dest, rec, lease)
                continue
            records[sid] = _run_one(scene, sid, fp, dest, cfg, client, process, rec, lease, result)
        write_ledger(dest)
    return result


def _run_one(scene: Scene, sid: str, fp: str, dest: str, cfg: SegmentConfig, client, process, rec, lease, result) -> dict:
    attempts = int((rec or {}).get("attempts", 0)) + 1
    started, t0 = _now(), time.perf_counter()
    new = {"scene": scene.url, "version": scene.version, "fingerprint": fp, "attempts": attempts,
           "started_at": started, "holder": lease.token, "objects": None, "error": None, "summary": None}
    try:
        summary = process(scene.url, dest, cfg, client)
        new.update(status="done", objects=int(summary.get("objects", 0)), summary=summary["outputs"]["json"])
    except Exception as exc:  # noqa: BLE001 - a bad scene is recorded and never blocks the others
        new.update(status="failed", error=one_line(exc))
        log.warning("%s: failed: %s", scene.url, new["error"])
    new.update(finished_at=_now(), seconds=round(time.perf_counter() - t0, 3))
    if lease.still_held():
        storage.write_text(_state(dest, "records", f"{sid}.json"), json.dumps(new))
        result["processed" if new["status"] == "done" else "failed"] += 1
    else:  # lost the lease while working (it expired, or the store let another take it): their record wins
        new.update(status="lost-lease", error="another watch holds this scene's lease now; its record counts")
        result["lost_lease"] += 1
        log.warning("%s: %s", scene.url, new["error"])
    result["results"].append(new)
    return new


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
    types = {"attempts": pa.int32(), "objects": pa.int64(), "seconds": pa.float64()}
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
