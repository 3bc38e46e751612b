"""Prefect flows over the one runner: a batch of scenes sharing one Dask cluster, and one scene.

Wiring only. The work is :func:`pipeline.runner.segment_batch` / :func:`pipeline.runner.segment_scene`, the
same calls ``seamline segment`` makes, so a flow publishes exactly what the CLI publishes; the flow passes
:func:`stage_task`, which makes each stage a Prefect task (the UI shows where time goes and which stage
failed; tasks pass references — paths, small dicts — never arrays). A scene whose outputs are current for its
input version and these settings is skipped, and a failed scene resumes from its work folder (finished tiles
are not redone), so retries are cheap.

Run offline (Prefect's ephemeral mode, no server) or against ``PREFECT_API_URL``:
``python -m flows.segment INPUT [INPUT ...] --out DIR [--config FILE] [flags of seamline segment]``.
"""

from __future__ import annotations

import sys

from flows.logs import flow_logging, prefect_environment

prefect_environment()

from prefect import flow, get_run_logger, task  # noqa: E402  (after the environment defaults above)
from prefect.cache_policies import NONE  # noqa: E402

from pipeline.cli.options import UsageParser, add_run_options, overrides_from_args  # noqa: E402
from pipeline.config_file import segment_config  # noqa: E402
from pipeline.errors import SeamlineError  # noqa: E402
from pipeline.runner import segment_batch, segment_scene  # noqa: E402

__all__ = ["segment_scene_flow", "segment_batch_flow", "stage_task", "main"]

#: Task retries per stage: the tile stage resumes from finished tiles, so retrying it is cheap.
RETRIES = {"ingest+stats": 1, "segment-tiles": 2, "stitch": 1, "write": 1, "label-image": 1}


def stage_task(fn, name: str):
    """The runner's stage wrapper for Prefect: each stage a task (no result caching: its inputs are a Dask
    client and plans, and the runner's own skip and resume rules decide what is redone)."""
    return task(fn, name=name, cache_policy=NONE, retries=RETRIES.get(name, 0), retry_delay_seconds=2)


stage_task.orchestrator = "prefect"  # type: ignore[attr-defined]  (the summary's "orchestrator")


@flow(name="seamline-segment-scene", validate_parameters=True)
def segment_scene_flow(input_path: str, out_dir: str, config: str | None = None, overrides: dict | None = None,
                       force: bool = False, progress: bool = True) -> dict:
    """One scene -> the outputs of ``seamline segment`` in ``out_dir``."""
    log = get_run_logger()
    cfg = segment_config(config, overrides, "flows.segment")
    with flow_logging(log, progress):
        s = segment_scene(input_path, out_dir, cfg, force=force, task=stage_task)
    log.info("%s: %s", input_path, "outputs current, skipped" if s.get("skipped") else f"{s['objects']} objects")
    return {k: s.get(k) for k in ("input", "objects", "skipped", "outputs")}


@flow(name="seamline-segment-batch", validate_parameters=True)
def segment_batch_flow(inputs: list[str], out_dir: str, config: str | None = None, overrides: dict | None = None,
                       force: bool = False, progress: bool = True) -> list[dict]:
    """Many scenes, one Dask cluster. A scene that fails is reported and the others still run; the flow fails
    at the end if any did."""
    log = get_run_logger()
    cfg = segment_config(config, overrides, "flows.segment")
    with flow_logging(log, progress):
        r = segment_batch(inputs, out_dir, cfg, force=force, task=stage_task)
    for p, exc in r.errors:
        log.error("%s: failed: %s", p, exc)
    if r.errors:
        raise RuntimeError(f"{len(r.errors)} of {len(inputs)} scenes failed: {', '.join(p for p, _ in r.errors)}")
    return [{k: s.get(k) for k in ("input", "objects", "skipped", "outputs")} for s in r.summaries]


def main(argv: list[str] | None = None) -> int:
    ap = UsageParser(prog="python -m flows.segment",
                                 description="seamline segment as a Prefect flow (each stage a task); the same "
                                             "outputs as the CLI")
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="scenes or slides: local paths or URLs")
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder (path or URL)")
    add_run_options(ap)
    ap.add_argument("--force", action="store_true", help="redo inputs whose outputs are current for these settings")
    a = ap.parse_args(argv)
    try:
        res = segment_batch_flow(a.inputs, a.out, a.config, overrides_from_args(a) or None, force=a.force,
                                 progress=not a.quiet)
    except SeamlineError as exc:  # bad input or settings: one line, as the CLI gives it
        print(f"seamline: error: {exc}", file=sys.stderr)
        return exc.exit_code
    for r in res:
        print(r.get("input"), "skipped (outputs current)" if r.get("skipped") else f"{r.get('objects')} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
