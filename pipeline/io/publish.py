"""Stage 9 (publish): a scene's output files published without rename: staged files, copied to their final names, and the JSON
summary written last as the commit marker.

Object stores have no atomic rename and no directories, and a run can die at any point. So every output is
first written to a local staging folder, then (on an object store) uploaded under a temporary key and copied
to its final key; the JSON summary goes last and names every other output file with its size and sha256.
Before anything is copied the old JSON is deleted, so a run killed mid-publish leaves *no* JSON under the
final name: readers (a re-run, ``seamline watch``) trust an output set only through :func:`verify_outputs`.

How to add an output file (quicklook, HTML report, GeoJSON, OME-Zarr labels…): in
:func:`pipeline.runner.segment_scene`, between ``stage_outputs`` and ``staging.publish``::

    staging, summary = stage_outputs(plan, groups, extra)   # a Staging per scene: parquet + gpkg already in it
    path = staging.path("quicklook", f"{stem}.png")        # a LOCAL path: write your file (or folder) there
    ...write it...
    # or, for what Dask workers wrote (they cannot reach the driver's disk): write it into the work folder
    # (plan.workdir, a path or URL every node reaches) and hand it over:
    staging.add_url("ome_zarr", f"{stem}.ome.zarr", storage.join(plan.workdir, f"{stem}.ome.zarr"))
    summary = staging.publish(summary)                      # once, after every writer: copies all, JSON last

``kind`` becomes the key in ``summary["outputs"]`` (final path or URL); a folder is published file by file
and each file is listed. Never write into the output folder directly: that file would not be in the JSON.
Files that are not per scene (a batch summary table) use :func:`pipeline.io.storage.write_bytes` (one
atomic object) — or a ``Staging`` with their own stem when they need a marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Any

from pipeline.io import storage

__all__ = ["Staging", "verify_outputs", "current_outputs", "summary_url", "sha256_file"]

PUBLISH_PREFIX = "_seamline/tmp"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def summary_url(out_dir: str, stem: str) -> str:
    return storage.join(out_dir, f"{stem}.json")


def _walk(root: str, name: str) -> list[tuple[str, str]]:
    """(local file, relative final name) for a staged file or every file under a staged folder."""
    if not os.path.isdir(root):
        return [(root, name)]
    out = []
    for d, _, files in os.walk(root):
        for f in sorted(files):
            p = os.path.join(d, f)
            out.append((p, name + "/" + os.path.relpath(p, root).replace(os.sep, "/")))
    return sorted(out, key=lambda x: x[1])


class Staging:
    """The output files of one scene while they are written; :meth:`publish` makes them final.

    Locally the staging folder is a hidden folder inside the output folder (same filesystem: publishing is
    ``os.replace``, no copy); for an object store it is a local temporary folder.
    """

    def __init__(self, out_dir: str, stem: str):
        self.out_dir = str(out_dir)
        self.stem = stem
        self.local = storage.is_local(self.out_dir)
        if self.local:
            storage.ensure_dir(self.out_dir)
            self.dir = tempfile.mkdtemp(prefix=f".{stem}.", suffix=".staging", dir=storage.local_path(self.out_dir))
        else:
            self.dir = tempfile.mkdtemp(prefix=f"seamline-{stem}-")
        self.entries: dict[str, str] = {}  # kind -> final name
        self.sources: dict[str, str] = {}  # final name -> where it was written, when not in self.dir

    def path(self, kind: str, name: str) -> str:
        """A local path to write output ``name`` (its final name in the output folder) to."""
        self._register(kind, name)
        return os.path.join(self.dir, name)

    def add_url(self, kind: str, name: str, src: str) -> None:
        """An output already written elsewhere — a path or URL, typically a folder the Dask workers wrote into
        the work folder (which every node reaches, unlike this staging folder) — published as ``name``."""
        self._register(kind, name)
        self.sources[name] = str(src)

    def _register(self, kind: str, name: str) -> None:
        if kind in self.entries and self.entries[kind] != name:
            raise ValueError(f"output kind {kind!r} staged twice ({self.entries[kind]}, {name})")
        self.entries[kind] = name

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc) -> bool:
        self.discard()
        return False

    def publish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Copy every staged output to its final name, then write ``<stem>.json`` (the commit marker) last.

        Returns the summary with ``outputs`` (kind → final path/URL, ``json`` included) and ``files``
        (final name → size and sha256 — or, for a file copied from object storage to object storage without
        passing through this machine, the store's ETag — of every other file)."""
        final_json = summary_url(self.out_dir, self.stem)
        try:
            remote_src = self._localize()
            missing = [n for n in self.entries.values() if n not in remote_src and not os.path.exists(os.path.join(self.dir, n))]
            if missing:
                raise FileNotFoundError(f"staged outputs never written: {', '.join(missing)}")
            files: dict[str, dict[str, Any]] = {}
            local_plan = []
            for name in self.entries.values():
                if name in remote_src:
                    continue
                for src, rel in _walk(os.path.join(self.dir, name), name):
                    files[rel] = {"size": os.path.getsize(src), "sha256": sha256_file(src)}
                    local_plan.append((src, rel))
            storage.remove(final_json)  # from here on, no earlier output set is trusted
            if self.local:
                for name in self.entries.values():
                    dest = storage.local_path(storage.join(self.out_dir, name))
                    if os.path.isdir(dest):
                        shutil.rmtree(dest)
                    os.replace(os.path.join(self.dir, name), dest)
            else:
                self._copy_remote(local_plan)
                files.update(self._copy_within_store(remote_src))
            summary = {**summary, "outputs": {**{k: storage.join(self.out_dir, n) for k, n in self.entries.items()},
                                              "json": final_json}, "files": dict(sorted(files.items()))}
            text = json.dumps(summary, indent=2, default=_json_default) + "\n"
            storage.write_text(final_json, text)  # local: temp + os.replace; object store: one PUT
        except OSError as exc:
            raise storage.storage_error(self.out_dir, exc, "writing the outputs", "--out") from None
        finally:
            self.discard()
        return summary

    def _localize(self) -> dict[str, str]:
        """Bring URL-sourced entries into the staging folder, except those that can be copied inside one object
        store (returned: name → source URL). Local sources are moved (a rename on one filesystem)."""
        out_fs = None if self.local else storage.fs_path(self.out_dir)[0]
        keep: dict[str, str] = {}
        for name, src in self.sources.items():
            dest = os.path.join(self.dir, name)
            if storage.is_local(src):
                shutil.move(storage.local_path(src), dest)
                continue
            fs, sp = storage.fs_path(src)
            if out_fs is not None and type(fs) is type(out_fs) and fs.protocol == out_fs.protocol:
                keep[name] = src
            elif fs.isdir(sp):
                fs.get(sp.rstrip("/") + "/", dest, recursive=True)
            else:
                fs.get_file(sp, dest)
        return keep

    def _copy_within_store(self, sources: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Server-side copies from the work folder (the temporary keys) to the final keys; size + ETag."""
        fs, base = storage.fs_path(self.out_dir)
        files: dict[str, dict[str, Any]] = {}
        for name, src in sources.items():
            _, sp = storage.fs_path(src)
            storage.remove(storage.join(self.out_dir, name), recursive=True)
            found = fs.find(sp, detail=True)
            if not found:
                found = {sp: fs.info(sp)}
            for path, meta in found.items():
                rel = name if path.rstrip("/") == sp.rstrip("/") else name + "/" + path[len(sp.rstrip("/")) + 1:]
                dest = f"{base.rstrip('/')}/{rel}"
                fs.copy(path, dest)
                files[rel] = {"size": meta.get("size"), "etag": _etag(fs.info(dest))}
        return files

    def _copy_remote(self, plan: list[tuple[str, str]]) -> None:
        fs, base = storage.fs_path(self.out_dir)
        tmp_root = f"{base.rstrip('/')}/{PUBLISH_PREFIX}/{uuid.uuid4().hex}"
        for name in self.entries.values():  # a re-published folder must not keep files of the old one
            if os.path.isdir(os.path.join(self.dir, name)):
                storage.remove(storage.join(self.out_dir, name), recursive=True)
        try:
            for src, rel in plan:
                fs.put_file(src, f"{tmp_root}/{rel}")
            for _, rel in plan:
                fs.copy(f"{tmp_root}/{rel}", f"{base.rstrip('/')}/{rel}")
        finally:
            try:
                fs.rm(tmp_root, recursive=True)
            except (FileNotFoundError, OSError):
                pass


def _etag(info: dict) -> str | None:
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    return str(tag).strip('"') if tag else None


def verify_outputs(out_dir: str, stem: str, deep: bool = False) -> dict[str, Any] | None:
    """The published summary of ``stem`` when its JSON is there and every file it names agrees (size; with
    ``deep`` also sha256), else None. The only way a re-run or ``watch`` should trust earlier outputs."""
    url = summary_url(str(out_dir), stem)
    try:
        summary = json.loads(storage.read_text(url))
    except FileNotFoundError:
        return None
    except ValueError:  # not JSON (a partial upload by another tool): not a trusted output set
        return None
    except Exception as exc:  # noqa: BLE001 - a refusing endpoint or a 403 is one line, never "not done"
        raise storage.storage_error(url, exc, "reading", "--out") from None
    files = summary.get("files")
    if not isinstance(files, dict) or not files:
        return None
    for rel, meta in files.items():
        u = storage.join(str(out_dir), rel)
        try:
            if storage.is_local(u):
                size = os.path.getsize(storage.local_path(u))
            else:
                size = storage.info(u).get("size")
            if size != meta.get("size"):
                return None
            if "etag" in meta and not storage.is_local(u):
                if meta["etag"] and _etag(storage.info(u)) != meta["etag"]:
                    return None
            elif deep:
                h = hashlib.sha256(storage.read_bytes(u)).hexdigest()
                if h != meta.get("sha256"):
                    return None
        except OSError:
            return None
    return summary


def current_outputs(out_dir: str, stem: str, version: str, fingerprint: str) -> dict[str, Any] | None:
    """The published summary of ``stem`` when the outputs verify (:func:`verify_outputs`) and were made from
    this ``version`` of the input (:func:`pipeline.io.storage.version_of`) with the settings of this
    ``fingerprint`` (:mod:`pipeline.settings`); else None. The runner and ``watch`` decide "done" with it."""
    s = verify_outputs(out_dir, stem)
    if s is None or s.get("input_version") != version or s.get("settings_fingerprint") != fingerprint:
        return None
    return s


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
