"""The watch as a scheduled Prefect deployment: wiring only (the work is :func:`pipeline.watch.watch_once`,
which runs each scene through the one runner, :func:`pipeline.runner.segment_scene`).

``seamline watch SOURCE --out DEST --cron "*/15 * * * *"`` calls :func:`serve_watch`: one deployment per
source (named after it) with that schedule, at most one run at a time (``global_limit=1``), flow retries, and
each scene's stages as Prefect tasks (:func:`flows.segment.stage_task`). Point ``PREFECT_API_URL`` at your
server; Dask workers started by this process inherit it, so none starts a temporary server of its own.
"""

from __future__ import annotations

import hashlib
import os

from flows.logs import flow_logging, prefect_environment

prefect_environment()

from prefect import flow, get_run_logger  # noqa: E402  (after the environment defaults above)

from flows.segment import stage_task  # noqa: E402
from pipeline.config_file import segment_config, shipped_config  # noqa: E402
from pipeline.settings import resolve_settings  # noqa: E402
from pipeline.stages.dispatch import cluster_client  # noqa: E402
from pipeline.watch import totals_line, watch_once  # noqa: E402

__all__ = ["watch_flow", "serve_watch", "deployment_name"]


def deployment_name(source: str) -> str:
    """One deployment per source: the concurrency limit then means one run per source at a time."""
    tail = source.rstrip("/").split("/")[-1] or "root"
    return f"watch-{tail}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"


@flow(name="seamline-watch", retries=2, retry_delay_seconds=30, validate_parameters=True)
def watch_flow(source: str, out: str, config: str | None = None, overrides: dict | None = None,
               max_attempts: int = 3, lease_seconds: float = 3600.0) -> dict:
    """One pass over ``source``: new or changed scenes through every stage (each a task), ledger updated."""
    log = get_run_logger()
    cfg = segment_config(config, overrides, "seamline watch")
    with flow_logging(log), cluster_client(resolve_settings(cfg).cfg) as client:
        # Workers inherit this process's PREFECT_API_URL: one server for all, never a temporary one each.
        urls = sorted({str(v) for v in client.run(lambda: os.environ.get("PREFECT_API_URL")).values()})
        log.info("Dask workers report to %s", urls)
        r = watch_once(source, out, cfg, client=client, max_attempts=max_attempts, lease_s=lease_seconds,
                       task=stage_task)
    log.info("%s: %s", source, totals_line(r))
    return {k: v for k, v in r.items() if k != "results"} | {"results": [
        {k: x[k] for k in ("scene", "status", "error", "objects")} for x in r["results"]]}


def serve_watch(source: str, out: str, config: str | None = None, overrides: dict | None = None,
                cron: str | None = None, interval: float | None = None, max_attempts: int = 3,
                lease_seconds: float = 3600.0) -> None:
    """Create (or update) the deployment with its schedule and serve its runs until interrupted."""
    # the config as an absolute path (the served runs may start in another folder); a shipped config's name
    # resolves to its file here, once, with the same rule as --once and segment
    params = {"source": source, "out": out, "config": str(shipped_config(config).resolve()) if config else None,
              "overrides": overrides or None, "max_attempts": max_attempts, "lease_seconds": lease_seconds}
    watch_flow.serve(name=deployment_name(source), cron=cron, interval=interval, parameters=params,
                     global_limit=1, pause_on_shutdown=False, print_starting_message=True,
                     description=f"seamline watch {source} --out {out}")
