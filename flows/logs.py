"""What a flow's log shows: the pipeline's own stage and progress lines and its warnings, not Dask's chatter.

Prefect configures logging when it is imported; Dask's scheduler, nanny and worker loggers would then put
their INFO lines (worker start-up, "Receive client connection", ...) into the flow log, outnumbering the
pipeline's own lines four to one. Under a flow they are held at WARNING, as the CLI holds them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from pipeline.report.progress import Progress, use

__all__ = ["prefect_environment", "flow_logging"]

DASK_LOGGERS = ("distributed", "dask", "bokeh", "tornado")


def prefect_environment() -> None:
    """Environment defaults for running flows offline: no telemetry, no model hub, and a patient start of
    Prefect's ephemeral API server (the 20 s default fails a whole flow on a busy 2-core machine)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Dask reads its logging levels when distributed is first imported, in this process and in every worker
    # process it spawns (which inherit the environment): set before either happens.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


class _ToRunLogger(logging.Handler):
    """Library warnings (logger ``seamline``) into the flow run's logger, so they reach the Prefect UI."""

    def __init__(self, run_logger) -> None:
        super().__init__(logging.INFO)
        self.run_logger = run_logger

    def emit(self, record: logging.LogRecord) -> None:
        self.run_logger.log(record.levelno, record.getMessage())


@contextlib.contextmanager
def flow_logging(run_logger, progress: bool = True) -> Iterator[None]:
    """Inside a flow: stage and tile progress as plain lines in the run log (never a redrawn bar), the
    library's warnings forwarded to it, and Dask's loggers at WARNING."""
    lib = logging.getLogger("seamline")
    handler = _ToRunLogger(run_logger)
    saved = {name: logging.getLogger(name).level for name in DASK_LOGGERS}
    lib_state = (lib.level, lib.propagate)
    lib.addHandler(handler)
    lib.setLevel(logging.INFO)
    lib.propagate = False
    for name in DASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with use(Progress("plain", sink=run_logger.info) if progress else None):
            yield
    finally:
        lib.removeHandler(handler)
        lib.setLevel(lib_state[0])
        lib.propagate = lib_state[1]
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
