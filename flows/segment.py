"""Prefect flows: one scene, and a batch of scenes sharing one Dask cluster.

They run offline with no server by default (Prefect's ephemeral mode). Each stage of :mod:`pipeline.runner`
is a task, so the Prefect UI shows where time goes and which stage failed; tasks pass references (paths,
small dicts), never arrays. A scene whose three outputs exist and are newer than its input is skipped, and a
failed scene resumes from its work folder (finished tiles are not redone), so retries are cheap.

Run: ``python -m flows.segment INPUT [INPUT ...] --out DIR [--config FILE]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The ephemeral API server gets 20 s to start by default; a busy 2-core machine (workers importing torch,
# a training run beside it) needs longer, and a timeout there fails the whole flow before any work.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NONE  # noqa: E402

from pipeline import runner  # noqa: E402
from pipeline.config import SegmentConfig  # noqa: E402
from pipeline.stages.dispatch import cluster_client  # noqa: E402

__all__ = ["segment_scene_flow", "segment_batch_flow", "outputs_current"]


def outputs_current(input_path: str, out_dir: str | Path) -> bool:
    """True when the scene's published JSON summary is there, every file it names agrees (size), and it was
    made from this version of the input (the scene is done)."""
    from pipeline.io import storage
    from pipeline.io.publish import verify_outputs
    from pipeline.io.raster import SceneInfo

    stem = SceneInfo(input_path, 1, 1, 1, "uint8", None, (1, 0, 0, 0, 1, 0), None).stem
    s = verify_outputs(str(out_dir), stem)
    if s is None:
        return False
    try:
        return s.get("input_version") in (None, storage.version_of(input_path))
    except OSError:
        return False


plan_task = task(runner.plan_scene, name="plan", cache_policy=NONE)
ingest_task = task(runner.run_ingest, name="ingest+stats", cache_policy=NONE, retries=1)
tiles_task = task(runner.run_tiles, name="segment-tiles", cache_policy=NONE, retries=2, retry_delay_seconds=2)
stitch_task = task(runner.run_stitch, name="stitch", cache_policy=NONE, retries=1)
write_task = task(runner.stage_outputs, name="write", cache_policy=NONE, retries=1)
report_task = task(runner.run_report, name="quicklook+report", cache_policy=NONE)
publish_task = task(lambda staging, summary: staging.publish(summary), name="publish", cache_policy=NONE)


def _one_scene(client, input_path: str, out_dir: str, cfg: SegmentConfig) -> dict:
    plan = plan_task(input_path, out_dir, cfg)
    from pipeline.report.progress import current

    current().scene = plan.info.stem
    stats = ingest_task(client, plan)
    job = runner.make_job(plan, stats)
    tiles = tiles_task(client, plan, job)
    groups = stitch_task(client, plan, job)
    staging, summary = write_task(plan, groups, {**runner.skipping_summary(plan, stats), "worker_seconds": tiles["timings"],
                                                  "tiles_processed": tiles["tiles"], "tiles_resumed": tiles["skipped"],
                                                  "joined_objects": len(set(groups.values())), "orchestrator": "prefect"})
    with staging:
        if cfg.report:  # before the work folder goes: the quicklook is made from its zarr store
            report_task(plan, summary, staging)
        summary = publish_task(staging, summary)  # every output copied, then <stem>.json last
    if not cfg.keep_intermediate:
        runner.remove_workdir(plan)
    return summary


def _progress(log):
    """Tile progress as plain lines in the flow's log (every few seconds), never a redrawn bar."""
    from pipeline.report.progress import Progress, use

    return use(Progress("plain", sink=log.info))


def _load_cfg(config: str | None, overrides: dict | None) -> SegmentConfig:
    if config:
        from pipeline.configio import load_yaml_config

        return load_yaml_config(config, SegmentConfig, overrides or {})
    return SegmentConfig.model_validate(overrides or {})


@flow(name="seamline-segment-scene", validate_parameters=True)
def segment_scene_flow(input_path: str, out_dir: str, config: str | None = None, overrides: dict | None = None,
                       skip_existing: bool = True) -> dict:
    """One scene → ``<stem>.parquet``, ``<stem>.gpkg``, ``<stem>.json`` in ``out_dir``."""
    log = get_run_logger()
    cfg = _load_cfg(config, overrides)
    if skip_existing and outputs_current(input_path, out_dir):
        log.info("%s: outputs are current, skipped", input_path)
        return {"input": input_path, "skipped": True}
    with _progress(log), cluster_client(cfg) as client:
        s = _one_scene(client, input_path, out_dir, cfg)
    log.info("%s: %d objects", input_path, s["objects"])
    return s


@flow(name="seamline-segment-batch", validate_parameters=True)
def segment_batch_flow(inputs: list[str], out_dir: str, config: str | None = None, overrides: dict | None = None,
                       skip_existing: bool = True) -> list[dict]:
    """Many scenes, one Dask cluster (the model stays loaded on the workers between scenes).

    A scene that fails is reported and the others still run; the flow fails at the end if any did.
    """
    log = get_run_logger()
    cfg = _load_cfg(config, overrides)
    results: list[dict] = []
    failed: list[str] = []
    with _progress(log), cluster_client(cfg) as client:
        for p in inputs:
            if skip_existing and outputs_current(p, out_dir):
                log.info("%s: outputs are current, skipped", p)
                results.append({"input": p, "skipped": True})
                continue
            try:
                results.append(_one_scene(client, p, out_dir, cfg))
            except Exception as exc:  # noqa: BLE001 - one bad scene must not stop the batch
                log.error("%s: failed: %s", p, exc)
                failed.append(p)
                results.append({"input": p, "failed": str(exc)})
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(inputs)} scenes failed: {', '.join(failed)}")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.segment")
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--config")
    ap.add_argument("--model")
    ap.add_argument("--no-skip", action="store_true", help="recompute scenes whose outputs are current")
    a = ap.parse_args(argv)
    overrides = {"model": a.model} if a.model else None
    res = segment_batch_flow(a.inputs, a.out, a.config, overrides, skip_existing=not a.no_skip)
    for r in res:
        print(r.get("input"), r.get("objects", "skipped" if r.get("skipped") else r.get("failed")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
