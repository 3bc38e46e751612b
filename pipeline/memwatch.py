"""Peak resident memory of a whole process tree (driver, scheduler, workers), sampled in a thread."""

from __future__ import annotations

import threading

import psutil

__all__ = ["TreeMemoryWatch"]


class TreeMemoryWatch:
    """``with TreeMemoryWatch() as w: ...; w.peak_bytes`` — sums RSS of this process and all descendants
    (of process ``pid`` and its descendants when given: a command a benchmark started)."""

    def __init__(self, interval: float = 0.1, pid: int | None = None):
        self.interval = interval
        self.pid = pid
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        try:
            me = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.sample())
