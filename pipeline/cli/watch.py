"""``seamline watch SOURCE --out DEST``: ``--once`` processes what is new and exits (cron, Airflow, CI); without
it the same work is served as a Prefect deployment on a schedule (``--cron`` or ``--interval``).

Serving needs Prefect, which the library never imports: only that branch imports ``flows.watch``.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from cronsim import CronSim, CronSimError

from pipeline.cli.options import add_run_options, config_from_args, overrides_from_args
from pipeline.errors import ParameterError
from pipeline.report.progress import Progress, use
from pipeline.settings import resolve_settings
from pipeline.watch import totals_line, watch_once

__all__ = ["add_watch_command", "validate_cron"]


def validate_cron(expr: str) -> str:
    """A five-field cron expression, or one clear line naming it and the fix."""
    try:
        CronSim(expr, datetime(2026, 1, 1))
    except (CronSimError, ValueError, KeyError, IndexError) as exc:
        raise ParameterError(f"--cron {expr!r}: not a cron expression ({exc}); use five fields, "
                             "e.g. \"*/15 * * * *\" (every 15 minutes)") from None
    return expr


def _cmd_watch(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, "seamline watch")
    if args.once and (args.cron or args.interval):
        raise ParameterError("--once runs one pass now; --cron/--interval serve a schedule: pass one or the other")
    if not args.once:
        if bool(args.cron) == bool(args.interval):
            raise ParameterError("seamline watch: pass --once, or a schedule: --cron \"*/15 * * * *\" or --interval SECONDS")
        if args.cron:
            validate_cron(args.cron)
        if args.interval is not None and args.interval <= 0:
            raise ParameterError(f"--interval {args.interval}: must be a positive number of seconds")
        resolve_settings(cfg)  # a broken checkpoint or an unusable tile fails now, not at the first scheduled run
        from flows.watch import serve_watch  # Prefect only here, never in the library

        serve_watch(args.source, args.out, config=args.config, overrides=overrides_from_args(args), cron=args.cron,
                    interval=args.interval, max_attempts=args.max_attempts, lease_seconds=args.lease_seconds)
        return 0
    with use(None if args.quiet else Progress()):
        r = watch_once(args.source, args.out, cfg, max_attempts=args.max_attempts, lease_s=args.lease_seconds)
    for x in r["results"]:
        print(f"{x['scene']}: {x['status']}" + (f" ({x['objects']} objects)" if x["status"] == "done" else f": {x['error']}"))
    print(f"{totals_line(r)}; ledger {args.out.rstrip('/')}/_seamline/ledger.parquet")
    return 1 if r["failed"] else 0


def add_watch_command(sub) -> None:
    w = sub.add_parser("watch", help="process every new or changed raster under a folder or bucket prefix, once per version",
                       description="Process every raster under SOURCE exactly once per version (key + size + ETag/mtime "
                                   "+ the settings that change results); state in DEST/_seamline/ (docs/OPERATIONS.md).")
    w.add_argument("source", metavar="SOURCE", help="folder or prefix: /data/incoming, s3://bucket/incoming")
    w.add_argument("--out", required=True, metavar="DEST", help="output folder or prefix (ledger in DEST/_seamline/)")
    add_run_options(w)
    w.add_argument("--once", action="store_true", help="process what is new now and exit (cron, Airflow, CI)")
    w.add_argument("--cron", help="serve a Prefect deployment on this schedule, e.g. \"*/15 * * * *\"")
    w.add_argument("--interval", type=float, metavar="SECONDS", help="serve a Prefect deployment every SECONDS")
    w.add_argument("--max-attempts", dest="max_attempts", type=int, default=3,
                   help="a failing scene is retried on later runs up to this many attempts (default 3)")
    w.add_argument("--diff-previous", dest="diff", action="store_const", const="previous", default=None,
                   help="diff each new version of a scene against its last done version: <stem>.changes.* in DEST, "
                        "counts in the ledger (config diff: previous)")
    w.add_argument("--lease-seconds", dest="lease_seconds", type=float, default=3600.0,
                   help="a scene's lease expires this long after its holder's last renewal (default 3600)")
    w.set_defaults(func=_cmd_watch)
