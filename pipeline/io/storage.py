"""One storage layer for inputs, the work folder and the outputs: local paths or any fsspec URL.

Why one layer: on a cluster the workers share no disk with the driver, so every file the pipeline touches —
the zarr store, tile part files, window labels, manifest, statistics and the published outputs — must be
reachable by URL from every process (``s3://``, ``gs://``, ``az://``, ``file://``; ``memory://`` in tests).
Local paths keep their fast path: plain ``os`` calls and atomic ``os.replace``, no fsspec in between.

Credentials and endpoints come from each backend's standard environment (s3fs/botocore read
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``…, ``AWS_REGION``, ``AWS_PROFILE``); there is no project setting.

Publishing (object stores have no rename) lives in :mod:`pipeline.io.publish`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import fsspec
import fsspec.core

from pipeline.errors import InputError, ParameterError
from pipeline.io.storage_errors import configure_fast_failures, storage_error

configure_fast_failures()  # every S3 client this process (and each worker, which imports this) makes

__all__ = ["is_local", "is_url", "local_path", "open_binary", "stem_of", "unique_stems", "join", "fs_path", "exists", "read_bytes", "read_text", "write_bytes",
           "write_text", "write_parquet", "read_parquet", "read_parquet_schema", "remove", "listdir", "info", "probe", "local_copy", "copy", "version_of", "zarr_store", "ensure_dir", "storage_error",
           "name_of"]


def is_local(url: str | Path) -> bool:
    """A plain path or a ``file://`` URL (no fsspec needed). The one test of "path or URL" in Seamline."""
    s = str(url)
    return "://" not in s or s.startswith("file://")


def is_url(url: str | Path) -> bool:
    """A URL that needs fsspec (``s3://``, ``zip://…::s3://…``, ``memory://``): not :func:`is_local`."""
    return not is_local(url)


def local_path(url: str | Path) -> str:
    s = str(url)
    return s[len("file://"):] if s.startswith("file://") else s


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a path or URL (never ``os.path`` on a URL: it would mangle ``s3://``)."""
    s = str(base)
    if is_local(s) and not s.startswith("file://"):
        return os.path.join(s, *parts)
    return posixpath.join(s.rstrip("/"), *parts)


def open_binary(path: str):
    """A binary file object for a local path or an fsspec URL (read by ranges, never downloaded whole)."""
    if is_url(path):
        fs, inner = fsspec.core.url_to_fs(path)  # the filesystem (e.g. a zip over s3) stays alive with the file it opened
        fh = fs.open(inner, "rb")
        fh._seamline_fs = fs
        return fh
    return open(local_path(path), "rb")


def name_of(url: str | Path) -> str:
    return posixpath.basename(str(url).rstrip("/"))


def fs_path(url: str | Path):
    """``(filesystem, path)`` for a URL (fsspec's own instance cache keeps this cheap)."""

    s = str(url)
    if is_local(s):
        return fsspec.filesystem("file"), local_path(s)
    try:
        return fsspec.core.url_to_fs(s)
    except (ImportError, ValueError) as exc:  # an unknown scheme, or its backend is not installed
        raise storage_error(s, exc, "opening") from None


def probe(url: str | Path, what: str, doing: str = "reading") -> dict[str, Any]:
    """The object's info, or one line naming ``what`` (``input``, ``--out``…), the URL, the cause and the fix
    (:func:`pipeline.io.storage_errors.storage_error`): the check every URL gets before a library that would
    raise its own error (GDAL, tifffile, zarr) touches it."""
    try:
        return info(url)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - every backend's own types become one line
        raise storage_error(str(url), exc, doing, what) from None


@contextlib.contextmanager
def local_copy(url: str | Path, what: str, siblings: tuple[str, ...] = ()) -> Iterator[str]:
    """A local path for ``url``: the path itself when it is local; a URL is checked (:func:`probe`) and copied
    into a temporary folder, with the ``siblings`` beside it that exist (e.g. ``.json``, the run summary of a
    Seamline output), removed afterwards. For the commands that read whole small files (``evaluate``)."""
    if is_local(url):
        yield local_path(url)
        return
    probe(url, what)
    with tempfile.TemporaryDirectory(prefix="seamline-") as d:
        name = name_of(url)
        dest = os.path.join(d, name)
        try:
            fs, p = fs_path(url)
            fs.get_file(p, dest)
            stem, _ = os.path.splitext(str(url))
            for suffix in siblings:
                if exists(stem + suffix):
                    fs.get_file(fs_path(stem + suffix)[1], os.path.join(d, os.path.splitext(name)[0] + suffix))
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - every backend's own types become one line
            raise storage_error(str(url), exc, "reading", what) from None
        yield dest


def copy(src: str | Path, dst: str | Path) -> None:
    """Copy one file: locally through a temporary name (atomic), within one object store server-side, else
    through this machine."""
    if is_local(src) and is_local(dst):
        write_bytes(dst, read_bytes(src)) if os.path.getsize(local_path(src)) < 2**20 else _copy_local(src, dst)
        return
    fs_s, ps = fs_path(src)
    fs_d, pd = fs_path(dst)
    if fs_s is fs_d:
        fs_s.copy(ps, pd)
    else:
        write_bytes(dst, read_bytes(src))


def _copy_local(src: str | Path, dst: str | Path) -> None:
    import shutil

    d = local_path(dst)
    os.makedirs(os.path.dirname(d) or ".", exist_ok=True)
    tmp = f"{d}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    shutil.copyfile(local_path(src), tmp)
    os.replace(tmp, d)


def exists(url: str | Path) -> bool:
    if is_local(url):
        return os.path.exists(local_path(url))
    fs, p = fs_path(url)
    fs.invalidate_cache(p)  # fsspec instances are shared and cache listings; objects change under them
    return fs.exists(p)


def read_bytes(url: str | Path) -> bytes:
    if is_local(url):
        with open(local_path(url), "rb") as f:
            return f.read()
    fs, p = fs_path(url)
    return fs.cat_file(p)


def read_text(url: str | Path) -> str:
    return read_bytes(url).decode()


def read_json(url: str | Path, tries: int = 4) -> Any:
    """A small JSON object (a lease, a record); None when it does not exist. A failed read — a reset
    connection or a 503 on a busy object store, a file caught mid-rewrite — is retried with a short back-off;
    the last error is raised (``OSError`` or ``ValueError``), never read as "absent"."""
    for i in range(tries):
        try:
            return json.loads(read_bytes(url))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            if i + 1 == tries:
                raise
            time.sleep(0.2 * (i + 1))
    return None


def write_bytes(url: str | Path, data: bytes) -> None:
    """Write a whole object atomically: locally a temporary name and ``os.replace``; on an object store one
    PUT (an object appears complete or not at all)."""
    if is_local(url):
        p = local_path(url)
        os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
        tmp = f"{p}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
        return
    fs, p = fs_path(url)
    fs.pipe_file(p, data)


def write_text(url: str | Path, text: str) -> None:
    write_bytes(url, text.encode())


def write_parquet(url: str | Path, table) -> None:
    """A pyarrow table as one parquet object, atomically (see :func:`write_bytes`)."""
    import pyarrow.parquet as pq

    if is_local(url):
        p = local_path(url)
        tmp = f"{p}.{os.getpid()}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, p)
        return
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes(url, buf.getvalue())


def read_parquet(url: str | Path, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    if is_local(url):
        return pq.read_table(local_path(url), columns=columns)
    return pq.read_table(io.BytesIO(read_bytes(url)), columns=columns)


def read_parquet_schema(url: str | Path):
    """A parquet file's schema (with its metadata), reading only the footer."""
    import pyarrow.parquet as pq

    if is_local(url):
        return pq.read_schema(local_path(url))
    fs, p = fs_path(url)
    with fs.open(p, "rb") as f:
        return pq.read_schema(f)


def remove(url: str | Path, recursive: bool = False) -> None:
    """Delete a file or (recursive) a folder/prefix; missing is not an error."""
    if is_local(url):
        import shutil

        p = local_path(url)
        if os.path.isdir(p):
            if recursive:
                shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        return
    fs, p = fs_path(url)
    try:
        fs.rm(p, recursive=recursive)
    except FileNotFoundError:
        pass


def listdir(url: str | Path) -> list[str]:
    """Names (not paths) directly under a folder or prefix; empty when absent."""
    if is_local(url):
        try:
            return sorted(os.listdir(local_path(url)))
        except FileNotFoundError:
            return []
    fs, p = fs_path(url)
    try:
        return sorted(posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False, refresh=True))
    except FileNotFoundError:
        return []


def info(url: str | Path) -> dict[str, Any]:
    fs, p = fs_path(url)
    fs.invalidate_cache(p)
    return fs.info(p)


def version_of(url: str | Path) -> str:
    """One version of an input object: size + ETag where the store has one (S3, GCS, Azure), else mtime.

    ``key + version`` identifies the bytes; mtime alone is not reliable across stores (a copy or a sync resets it).
    """
    if is_local(url):
        st = os.stat(local_path(url))
        return f"{st.st_size}:{st.st_mtime_ns}"
    d = info(url)
    tag = d.get("ETag") or d.get("etag") or d.get("md5Hash") or d.get("content_md5") or d.get("mtime") \
        or d.get("LastModified") or d.get("last_modified") or d.get("created")
    return f"{d.get('size')}:{str(tag).strip(chr(34))}"


def ensure_dir(url: str | Path) -> None:
    """Folders exist only locally; on object stores a prefix exists once something is under it."""
    if is_local(url):
        os.makedirs(local_path(url), exist_ok=True)


def zarr_store(url: str | Path, read_only: bool = False):
    """What ``zarr`` should open for ``url``: the local path itself (zarr's LocalStore, the fast path), or an
    FsspecStore for a URL (its credentials from the backend's standard environment)."""
    if is_local(url):
        return local_path(url)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(str(url), read_only=read_only)


def stem_of(path: str) -> str:
    """Output file stem of an input: its name without image extensions (a URL's query and chain removed)."""
    name = Path(path.split("::")[0].split("?")[0].rstrip("/")).name
    for suf in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".svs", ".ndpi", ".vrt"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def unique_stems(paths: list[str]) -> list[str]:
    """Output stems for a batch: each input's :func:`stem_of`, and where two inputs share one (labs name
    slides ``caseA/slide.svs``, ``caseB/slide.svs``), the shortest run of parent folder names that tells them
    apart, joined with ``_`` (``caseA_slide``, ``caseB_slide``). The same input twice is an error."""
    if len(set(paths)) != len(paths):
        dup = next(p for p, n in Counter(paths).items() if n > 1)
        raise ParameterError(f"input {dup} is given twice; pass each input once")
    stems = [stem_of(p) for p in paths]
    parents = [[x for x in p.split("::")[0].split("?")[0].rstrip("/").split("/")[:-1] if x and not x.endswith(":")]
               for p in paths]
    counts = Counter(stems)
    out = list(stems)
    for stem in (s for s, n in counts.items() if n > 1):
        idx = [i for i, s in enumerate(stems) if s == stem]
        depth = 1
        while True:
            names = ["_".join([*parents[i][-depth:], stem]) for i in idx]
            if len(set(names)) == len(names) or depth > max(len(parents[i]) for i in idx):
                break
            depth += 1
        if len(set(names)) != len(names):
            names = [f"{stem}_{k + 1}" for k in range(len(idx))]
        for i, n in zip(idx, names):
            out[i] = n
    if len(set(out)) != len(out):  # a made-up name equal to another input's own stem
        out = [s if counts[stems[i]] == 1 else f"{s}_{i + 1}" for i, s in enumerate(out)]
    return out

