"""A lease per scene on any storage, so that two ``seamline watch`` processes on one DEST never process the
same scene twice, and a dead holder blocks nobody for longer than the lease's time to live.

The lease is one small JSON object (holder token, host, pid, expiry). Acquiring it:

1. **create-if-absent** where the store has conditional writes: ``O_CREAT | O_EXCL`` on a local disk, S3's
   ``If-None-Match: *`` (s3fs ``mode="create"``) on object stores that honour it;
2. an **expired** lease (or a store without conditional writes) is taken over by *write-then-read-back*:
   write our token, wait ``settle`` seconds, read it back; only the process whose token is there holds it
   (of two writers racing, both read the last write). On an object store the read-back follows a successful
   conditional create too: not every S3 implementation makes ``If-None-Match`` atomic (moto's server checks
   and then writes, so two racing creates can both succeed), and then the same rule picks one holder;
3. while work runs, a thread renews the expiry every third of the time to live; before the result counts,
   :meth:`Lease.still_held` reads the object back.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

from pipeline.io import storage

__all__ = ["Lease"]


class Lease:
    def __init__(self, url: str, ttl_s: float = 3600.0, settle_s: float = 0.5, clock: Callable[[], float] = time.time):
        """``clock`` (seconds since the epoch) is what expiry is judged by: ``time.time`` but in tests, which pass
        a clock they advance, so that an expiry does not depend on how fast the machine is."""
        self.url, self.ttl_s, self.settle_s, self.clock = url, float(ttl_s), float(settle_s), clock
        self.token = uuid.uuid4().hex
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": self.clock() + self.ttl_s}).encode()

    def _read(self, tries: int = 4) -> dict[str, Any] | None:
        """The lease as stored; None when there is none; ``{}`` when it stays unreadable.

        A failed read is retried (:func:`pipeline.io.storage.read_json`) first: on a busy object store a GET can
        fail transiently (a reset connection, a 503), and reading that as "not ours" made a holder that had
        just finished a scene skip its done-record — so the other watcher processed the scene again."""
        try:
            return storage.read_json(self.url, tries)
        except (ValueError, OSError):
            return {}  # still unreadable: treat as someone else's, unexpired

    def _create_if_absent(self) -> bool | None:
        """True: created; False: exists; None: the store cannot do it (fall back to read-back)."""
        body = self._body()
        if storage.is_local(self.url):
            p = storage.local_path(self.url)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            try:
                fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            return True
        fs, p = storage.fs_path(self.url)
        if fs.protocol not in ("s3", "s3a", ("s3", "s3a")) and "s3" not in fs.protocol:
            return None
        try:
            fs.pipe_file(p, body, mode="create")
            return True
        except FileExistsError:
            return False
        except OSError as exc:  # 412 Precondition Failed arrives as a generic error on some versions
            if "412" in str(exc) or "PreconditionFailed" in str(exc) or "ConditionalRequestConflict" in str(exc):
                return False
            if "NotImplemented" in str(exc) or "501" in str(exc):
                return None
            raise

    def acquire(self) -> bool:
        """Try once; True when this process now holds the lease (and its renewal thread runs)."""
        created = self._create_if_absent()
        if created is False:
            cur = self._read()
            if cur is None:  # released in between: try again once, conditionally
                created = self._create_if_absent()
                if created is False:  # someone else created it first: theirs (never overwrite a live lease)
                    return False
            elif cur == {} or float(cur.get("expires", 0)) > self.clock():
                return False
        if created is not True:  # expired, or no conditional writes here: write, wait, read back
            storage.write_bytes(self.url, self._body())
        if created is not True or not storage.is_local(self.url):  # a local O_EXCL create is atomic
            time.sleep(self.settle_s)
        cur = self._read()
        self.held = bool(cur) and cur.get("token") == self.token
        if self.held:
            self._thread = threading.Thread(target=self._renew, name="seamline-lease", daemon=True)
            self._thread.start()
        return self.held

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                cur = self._read()
                if cur == {}:  # unreadable even after retries: try again next period, the lease is not lost
                    continue
                if cur is None or cur.get("token") != self.token:
                    self.held = False
                    return
                storage.write_bytes(self.url, self._body())
            except Exception:  # noqa: BLE001 - storage unreachable: the lease lapses, still_held() will say so
                continue

    def still_held(self) -> bool:
        cur = self._read()
        self.held = bool(cur) and cur.get("token") == self.token
        return self.held

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held and self.still_held():
            storage.remove(self.url)
        self.held = False

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
