"""Progress of a run, for the person waiting on it: stage names, and tiles done/total, Mpx/s and ETA.

Two views of the same events, picked by where stderr goes:

* ``live``: a rich progress bar redrawn in place, when the stream is a terminal;
* ``plain``: one line per stage start/end and a tile line every few seconds (``every``), when it is not —
  logs, CI, a Prefect worker — where a redrawn bar would be thousands of garbage lines;
* ``off``: nothing (``--quiet``, and the library's default: ``pipeline`` prints nothing unless asked).

The library reports through :func:`current`, a process-wide reporter that the CLI (or a flow) installs with
:func:`use`; stages never take a reporter argument, and tile counting happens where the driver collects
finished tasks (``runner.run_tiles``), never inside the per-tile hot path on the workers.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Callable, Iterator, TextIO

__all__ = ["Progress", "current", "use", "format_eta"]

DEFAULT_EVERY_S = 5.0


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _mpx(rate: float) -> str:
    v = rate / 1e6
    return f"{v:.2f}" if v >= 0.1 else f"{v:.4f}"


class Progress:
    """Stage and tile progress on one stream. ``mode``: ``auto`` (live on a terminal, else plain), ``live``,
    ``plain`` or ``off``. ``sink`` replaces the stream for plain lines (e.g. a Prefect logger's ``info``)."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, every: float | None = None,
                 sink: Callable[[str], None] | None = None):
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "live" if sink is None and isatty is not None and isatty() else "plain"
        if mode not in ("live", "plain", "off"):
            raise ValueError(f"progress mode {mode!r}: expected auto, live, plain or off")
        self.mode = mode
        if every is None:
            every = float(os.environ.get("SEAMLINE_PROGRESS_EVERY", DEFAULT_EVERY_S))
        self.every = every
        self._sink = sink
        self.scene = ""
        self._rich = None
        self._task = None
        self._tiles: dict | None = None
        self._lock = threading.Lock()
        self._stage: tuple[str, float] | None = None
        self._last_line = time.perf_counter()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ output
    def _line(self, text: str) -> None:
        self._last_line = time.perf_counter()
        msg = f"seamline: {self.scene + ': ' if self.scene else ''}{text}"
        if self._sink is not None:
            self._sink(msg)
        elif self._rich is not None:
            self._rich.console.print(msg, markup=False, highlight=False)
        else:
            self.stream.write(msg + "\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def _tick(self) -> None:
        """Plain mode: a line every ``every`` seconds even while nothing finishes (long tiles, a long ingest),
        so a log shows the run is alive."""
        while not self._stop.wait(min(self.every, 1.0)):
            with self._lock:
                if time.perf_counter() - self._last_line < self.every:
                    continue
                if self._tiles is not None:
                    self._line(self.tile_line(*self.rate_eta()))
                elif self._stage is not None:
                    self._line(f"{self._stage[0]} ... {time.perf_counter() - self._stage[1]:.0f} s")

    def _start_ticker(self) -> None:
        if self.mode == "plain" and self.every > 0 and self._ticker is None:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="seamline-progress", daemon=True)
            self._ticker.start()

    def note(self, text: str) -> None:
        """One line of its own (the quality verdict at the end of a run), unless progress is off."""
        if self.mode != "off":
            with self._lock:
                self._line(text)

    # ------------------------------------------------------------------ stages
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Announce a stage, time it, and say when it is done (or that it failed)."""
        if self.mode == "off":
            yield
            return
        t = time.perf_counter()
        with self._lock:
            self._line(f"{name} ...")
            self._stage = (name, t)
        self._start_ticker()
        try:
            yield
        except BaseException:
            with self._lock:
                self._stage = None
                self._line(f"{name} failed after {time.perf_counter() - t:.1f} s")
            raise
        with self._lock:
            self._stage = None
            self._line(f"{name} done in {time.perf_counter() - t:.1f} s")

    # ------------------------------------------------------------------ tiles
    def start_tiles(self, total: int, pixels_total: float) -> None:
        """Begin counting ``total`` tiles covering ``pixels_total`` scene pixels."""
        if self.mode == "off":
            return
        self._start_ticker()
        now = time.perf_counter()
        self._tiles = {"total": total, "done": 0, "processed": 0, "px_total": float(pixels_total), "px_done": 0.0,
                       "t0": now, "last": now}
        if self.mode == "live":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as RichProgress

            console = Console(file=self.stream, force_terminal=True)
            self._rich = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tiles"),
                TextColumn("{task.fields[rate]} Mpx/s ETA {task.fields[eta]}"),
                console=console, transient=False, redirect_stdout=False, redirect_stderr=False,
            )
            self._rich.start()
            self._task = self._rich.add_task(f"{self.scene} tiles".strip(), total=total, rate="--", eta=format_eta(None))

    def advance(self, tiles: int, resumed: int = 0) -> None:
        """``tiles`` more tiles finished, of which ``resumed`` were already done by an earlier run (they count
        towards done/total but not towards the rate)."""
        t = self._tiles
        if self.mode == "off" or t is None:
            return
        n = tiles + resumed
        t["done"] += n
        px = t["px_total"] * n / max(t["total"], 1)
        t["px_done"] += px
        if tiles:
            t["processed"] += px
        now = time.perf_counter()
        rate, eta = self.rate_eta()
        if self._rich is not None:
            self._rich.update(self._task, completed=t["done"], rate=_mpx(rate) if rate else "--",
                              eta=format_eta(eta))
        elif now - self._last_line >= self.every or t["done"] >= t["total"]:
            with self._lock:
                self._line(self.tile_line(rate, eta))

    def rate_eta(self) -> tuple[float | None, float | None]:
        """Pixels per second of the tiles processed in this run, and seconds to go at that rate."""
        t = self._tiles
        if not t:
            return None, None
        dt = time.perf_counter() - t["t0"]
        rate = t["processed"] / dt if dt > 0 and t["processed"] > 0 else None
        eta = (t["px_total"] - t["px_done"]) / rate if rate else None
        return rate, eta

    def tile_line(self, rate: float | None, eta: float | None) -> str:
        t = self._tiles or {"done": 0, "total": 0}
        pct = 100.0 * t["done"] / max(t["total"], 1)
        r = f"{_mpx(rate)} Mpx/s" if rate else "-- Mpx/s"
        return f"tiles {t['done']}/{t['total']} ({pct:.0f}%), {r}, ETA {format_eta(eta)}"

    def finish_tiles(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        with self._lock:
            self._tiles = None


_OFF = Progress("off")
_current: Progress = _OFF


def current() -> Progress:
    """The reporter the running command installed (a silent one by default)."""
    return _current


@contextlib.contextmanager
def use(progress: Progress | None) -> Iterator[Progress]:
    """Install ``progress`` as :func:`current` for the duration of a command."""
    global _current
    prev = _current
    _current = progress if progress is not None else _OFF
    try:
        yield _current
    finally:
        _current.close()
        _current = prev
