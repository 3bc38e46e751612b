"""One scene through every stage: :func:`segment_scene` is THE runner. The CLI (``seamline segment``), the
Prefect flows (``flows/segment.py``, ``flows/watch.py``) and ``seamline watch`` all call it; a flow passes a
``task`` wrapper (``prefect.task``) so that each stage shows as a task, and nothing else differs. Each stage is
a plain function of this module (docs/ARCHITECTURE.md has the table stage -> file -> function).

The work folder (``OUT/.seamline-work/<stem>``, or ``<workdir>/<stem>``) holds the zarr store, the per-tile
parts and window labels. Like the input and the outputs it may be a local path or any fsspec URL
(:mod:`pipeline.io.storage`): on a cluster whose nodes share no disk, a bucket. It is keyed by the input's
version, the settings fingerprint (:mod:`pipeline.settings`) and what is read: a re-run after a failure
resumes (ingest is skipped when complete, finished tiles are skipped); a run with other settings starts over.
A scene whose published outputs verify for this input version and these settings is not run again unless
``force`` (:func:`pipeline.io.publish.current_outputs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline import __version__
from pipeline.config import SegmentConfig
from pipeline.errors import InputError, ParameterError, QualityGateError
from pipeline.io import storage
from pipeline.io.batch import batch_row, failed_row, write_batch_summary
from pipeline.io.outputs import write_outputs
from pipeline.io.publish import Staging, current_outputs
from pipeline.io.scene import SceneInfo
from pipeline.io.sources import open_source, resolve_channels
from pipeline.io.storage import stem_of, unique_stems
from pipeline.memwatch import TreeMemoryWatch
from pipeline.models.stain import fixed_percentiles
from pipeline.report.progress import current
from pipeline.report.stage import run_report as report_scene
from pipeline.report.stage import write_index
from pipeline.settings import Settings, resolve_settings
from pipeline.stages.assemble import object_batches, output_measurements, valid_pixels
from pipeline.stages.dispatch import cluster_client, cores_per_worker
from pipeline.stages.grid import TileGrid
from pipeline.stages.ingest import create_store, ingest_block, plan_ingest, sample_stride, scene_statistics
from pipeline.stages.inputs import plan_input
from pipeline.stages.label_image import write_label_image
from pipeline.stages.model_choice import choose_default_model
from pipeline.stages.objectscale import choose_scale, estimate_scene_diameter
from pipeline.stages.pixel_stats import scene_density
from pipeline.stages.quality import assess_run, object_limits, quality_line, refuses
from pipeline.stages.skipping import needed_tiles, nodata_skip, tile_fractions, tissue_mask, tissue_skip
from pipeline.stages.stitch import components, seam_edges
from pipeline.stages.tile_task import TileJob, process_tiles

WINDOW_CHUNK = 256

log = logging.getLogger("seamline")

__all__ = ["ScenePlan", "plan_scene", "run_ingest", "run_tiles", "run_stitch", "stage_outputs", "run_report",
           "segment_scene", "done_outputs", "StageWrapper"]

#: ``task(fn, name) -> callable``: how each stage is called (the flows pass one that makes a Prefect task).
StageWrapper = Callable[[Callable[..., Any], str], Callable[..., Any]]


@dataclass
class ScenePlan:
    info: SceneInfo
    out_dir: str  # path or URL
    workdir: str  # path or URL
    cfg: SegmentConfig  # with the halo resolved (never None)
    model: str
    class_name: str
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    input: Any = None  # pipeline.stages.inputs.InputPlan: source description, resolution, overview
    fingerprint: str = ""  # input version + settings + what is read (the work folder's key)
    settings_fingerprint: str = ""  # the settings that change results (pipeline.settings)
    model_id: str = ""  # the model's identity (name + sha256 of its metadata)
    input_version: str | None = None  # size + ETag/mtime of the input (pipeline.io.storage.version_of)
    scale: dict | None = None  # the object-scale decision (pipeline.stages.objectscale.ObjectScale.as_dict)
    class_names: list[str] | None = None  # a multi-class model's classes (each object gets its most probable)
    model_classes: list[str] | None = None  # the checkpoint's class list (its order fixes the colours)
    stem: str = ""  # the outputs' name: <stem>.parquet, <stem>.json, ...
    metadata: dict | None = None  # the checkpoint's JSON (its domain record: the quality verdict); None: classical

    @property
    def zarr_path(self) -> str:
        return storage.join(self.workdir, "scene.zarr")

    @property
    def grid(self) -> TileGrid:
        return TileGrid(self.info.height, self.info.width, self.cfg.tile, self.cfg.halo)


def _work_key(info: SceneInfo, settings_fp: str) -> str:
    """The work folder's key: the input and its version, the settings fingerprint, and what the store holds
    (reader, series, level, resample, channels)."""
    src = info.path
    try:
        src_id = f"{src}:{storage.version_of(src)}"
    except (OSError, InputError, ValueError):
        src_id = src
    return hashlib.sha256(json.dumps([src_id, settings_fp, info.as_attrs()], sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_writable(url: str, what: str) -> None:
    """Write and delete one small object, so a read-only bucket or missing credentials fail before the work."""
    probe = storage.join(url, f".seamline-probe-{uuid.uuid4().hex[:12]}")
    try:
        storage.write_bytes(probe, b"")
        storage.remove(probe)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp raise their own types for endpoint and credential errors
        raise storage.storage_error(url, exc, "writing a test object", what) from None


def plan_scene(input_path: str, out_dir: str | Path, settings: Settings, stem: str | None = None) -> ScenePlan:
    """Stage 1: validate the input against the model, choose what to read (level, resampling, channels,
    object scale), and prepare (or resume) the work folder. No heavy work.

    ``stem`` names the outputs (``<stem>.parquet``…; default: the input's file name without extensions)."""
    cfg, model, md = settings.cfg, settings.model, settings.metadata
    name = settings.model_name
    inp = plan_input(input_path, cfg, md, name)
    scale = object_scale(inp, cfg, md)
    if scale.factor != 1.0:  # the object-size hook of the resolution rule: level-0 px per working px
        inp = plan_input(input_path, cfg, md, name, extra_scale=1.0 / scale.factor)
    info = inp.info
    stem = stem or info.stem
    warnings = [*scale.warnings, *inp.warnings, *settings.warnings]
    for w in warnings:
        log.warning(w)
    class_names = None
    if md is None:
        class_name = cfg.class_name or "object"
    else:
        class_name = cfg.class_name or (md.get("classes") or ["object"])[0]
        classes = list(md.get("classes") or [])
        class_names = classes if len(classes) > 1 and len(md.get("heads", [])) == 3 + len(classes) else None
        bands = int(md["in_channels"])
        if info.count not in (1, bands) and info.count < bands:
            raise InputError(f"input {input_path}: {info.count} bands, but model {name} expects {bands} (or 1); pick another model")
    out = str(out_dir)
    workdir = storage.join(cfg.workdir or storage.join(out, ".seamline-work"), stem)
    check_writable(out, "--out")
    fp = _work_key(info, settings.fingerprint)
    manifest = storage.join(workdir, "manifest.json")
    try:
        same = json.loads(storage.read_text(manifest)).get("fingerprint") == fp
        fresh = False
    except (FileNotFoundError, json.JSONDecodeError):
        same, fresh = False, True
    except Exception as exc:  # noqa: BLE001 - a refusing endpoint or a 403: one line naming the work folder
        raise storage.storage_error(workdir, exc, "reading", "work folder") from None
    try:
        if not same:
            storage.remove(workdir, recursive=True)  # other settings, other input version, or a broken start
            storage.ensure_dir(storage.join(workdir, "parts"))
            storage.write_text(manifest, json.dumps({"fingerprint": fp, "input": info.path}))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - storage backends raise their own types; storage_error makes one line
        raise storage.storage_error(workdir, exc, "writing" if fresh else "writing (resetting)", "work folder") from None
    try:
        version = storage.version_of(info.path)
    except (OSError, InputError, ValueError):
        version = None
    return ScenePlan(info, out, workdir, cfg, model, class_name, class_names=None if cfg.class_name else class_names,
                     model_classes=list(md.get("classes") or []) or None if md else None,
                     warnings=warnings, input=inp, fingerprint=fp, settings_fingerprint=settings.fingerprint,
                     model_id=settings.model_id, input_version=version, scale=scale.as_dict(), stem=stem, metadata=md)


def object_scale(inp, cfg: SegmentConfig, md: dict | None):
    """The object-diameter route (:mod:`pipeline.stages.objectscale`) for a planned input read at level 0:
    config ``object_diameter``, else the level-0 pixel size, else an estimate from a few full-resolution
    windows of the channels the model gets (read only in that last case)."""

    info = inp.info
    ps = (info.pixel_size_um[0] / info.scale, info.pixel_size_um[1] / info.scale) if info.pixel_size_um else None
    h0, w0 = info.level0 or (info.height, info.width)

    def estimate():
        with open_source(info.path, cfg.reader, cfg.series) as src:
            channels = list(info.channels) if info.channels is not None else None
            return estimate_scene_diameter(lambda r, c, h, w: src.read(0, r, c, h, w, channels), h0, w0, info.nodata)

    return choose_scale(md, ps, cfg.object_diameter, estimate)


def run_ingest(client, plan: ScenePlan) -> dict:
    """Stage 2: raster → zarr (parallel, disjoint chunks) and scene statistics from the global lattice."""
    stats_file = storage.join(plan.workdir, "stats.json")
    if storage.exists(stats_file):
        return json.loads(storage.read_text(stats_file))

    info, tile = plan.info, plan.cfg.tile
    grid = plan.grid
    skip_tissue: set[int] = set()
    tissue: dict[str, Any] | None = None
    inp = plan.input
    if inp is not None and inp.tissue["run"] and inp.overview is not None:
        tc = plan.cfg.tissue
        ov_um = info.pixel_size_um[0] / info.scale * inp.overview_downsample if info.pixel_size_um else None
        mask, tissue = tissue_mask(inp.overview, None, tc.method, ov_um, tc.min_size_um, tc.dilate_um)
        fr = tile_fractions(mask, grid, inp.overview_downsample / info.scale)
        skip_tissue = tissue_skip(fr, tc.min_fraction)
        tissue["working_px"] = int(round(float(mask.sum()) * (inp.overview_downsample / info.scale) ** 2))
        if info.pixel_size_um:
            tissue["area_mm2"] = round(float(mask.sum()) * (ov_um / 1000) ** 2, 6)
    create_store(plan.zarr_path, info, tile)
    stride = sample_stride(info.height, info.width)
    blocks = plan_ingest(info, tile, needed_tiles(grid, skip_tissue) if skip_tissue else None)
    futures = client.map(ingest_block, [info] * len(blocks), [plan.zarr_path] * len(blocks), blocks,
                         [stride] * len(blocks), [tile] * len(blocks), pure=False)
    try:
        results = client.gather(futures)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - GDAL read errors from a truncated or corrupt file surface here
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"input {info.path}: reading pixel data failed ({first}); the file looks truncated or corrupt — re-copy or re-export it") from None
    samples = [r[0] for r in results]
    skip_nodata = nodata_skip(grid, [c for r in results for c in r[1]]) - skip_tissue if plan.cfg.skip_nodata else set()
    cl = plan.cfg.classical
    stats = scene_statistics(samples, info.nodata, plan.cfg.stats.low, plan.cfg.stats.high, cl.threshold, cl.low_ratio,
                             cl.low_threshold, int((plan.metadata or {}).get("in_channels", info.count)), bool(info.crs_wkt),
                             fixed_percentiles(plan.metadata, info.dtype, info.count))  # an H&E model's (#20)
    stats["stride"] = stride
    stats["skip"] = {"tissue": sorted(skip_tissue), "nodata": sorted(skip_nodata)}
    if tissue is not None:
        stats["tissue"] = {"ran": True, "why": inp.tissue["why"], **tissue, "tiles_skipped": len(skip_tissue)}
    storage.write_text(stats_file, json.dumps(stats))
    return stats


def make_job(plan: ScenePlan, stats: dict) -> TileJob:
    """What every tile task needs. The model's CPU threads: this machine's share per LocalCluster worker; on
    an existing cluster, whatever its workers were started with (torch's default)."""
    c = plan.cfg
    threads = None if (c.scheduler or c.cluster.kind != "local") else cores_per_worker(c.workers)
    skip = stats.get("skip", {})
    return TileJob(plan.zarr_path, plan.workdir, plan.info.height, plan.info.width, c.tile, c.halo, plan.model,
                   c.classical.model_dump(exclude={"threshold", "low_ratio", "low_threshold"}),
                   {k: v for k, v in stats.items() if k != "skip"}, plan.info.nodata, c.device,
                   threads, c.batch_size, c.tta, c.inference,
                   skip=frozenset(skip.get("tissue", [])) | frozenset(skip.get("nodata", [])), masked=plan.info.has_mask)


def task_batches(n: int, tiles_per_task: int, slots: int) -> list[list[int]]:
    """Tile indices grouped into tasks: up to ``tiles_per_task`` each (fewer, larger tasks), but never so many
    that a small scene leaves workers idle: at least two tasks per worker thread (``slots``) while there are
    tiles for them."""
    per_task = max(1, min(tiles_per_task, math.ceil(n / (2 * max(1, slots)))))
    return [list(range(s, min(n, s + per_task))) for s in range(0, n, per_task)]


def run_tiles(client, plan: ScenePlan, job: TileJob) -> dict:
    """Stage 3: every tile through the model, batched per task; returns summed worker timings."""
    import zarr

    win_path = storage.join(plan.workdir, "windows.zarr")
    if not storage.exists(storage.join(win_path, "zarr.json")):
        from zarr.codecs import ZstdCodec

        w = job.window_size
        # Chunks much smaller than a window: the stitch reads only the seam bands along a window's edges,
        # and decompresses only the chunks they cross. One tile still writes only its own chunks.
        c = min(w, WINDOW_CHUNK)
        zarr.create_array(store=storage.zarr_store(win_path), shape=(len(job.grid), w, w), chunks=(1, c, c), dtype="uint32",
                          compressors=[ZstdCodec(level=1)], fill_value=0, overwrite=True)
    # Workers started with --resources GPU=N (infra/, cluster: {kind: slurm, gpus: …}) get the learned model's
    # tile tasks, one per GPU at a time; a cluster without GPU resources runs them anywhere.
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    gpus = sum(int(w.get("resources", {}).get("GPU", 0)) for w in workers)
    annotate = {"resources": {"GPU": 1}} if gpus and plan.model != "classical" else {}
    slots = gpus if annotate else sum(client.nthreads().values())
    batches = task_batches(len(job.grid), plan.cfg.tiles_per_task, slots)
    futures = client.map(process_tiles, [job] * len(batches), batches, pure=False, **annotate)
    total = {"tiles": 0, "skipped": 0, "pieces": 0, "pixels": 0, "empty": 0, "timings": {}}
    from distributed import as_completed

    progress = current()  # counted here, as tasks finish on the driver: nothing added to the workers' hot path
    progress.start_tiles(len(job.grid), plan.info.width * plan.info.height)
    for fut in as_completed(futures):
        r = fut.result()
        progress.advance(r["tiles"], r["skipped"] + r.get("empty", 0))  # skipped (no tissue, nodata) tiles count as done
        for k in ("tiles", "skipped", "pieces", "pixels", "empty"):
            total[k] += r[k]
        for k, v in r["timings"].items():
            total["timings"][k] = total["timings"].get(k, 0.0) + v
    progress.finish_tiles()
    return total


def run_stitch(client, plan: ScenePlan, job: TileJob) -> dict[int, int]:
    """Stage 4: seam edges per tile (parallel), then one connected-components step on the driver."""
    n = len(job.grid)
    futures = client.map(seam_edges, [job] * n, list(range(n)), pure=False)
    edges = [e for e in client.gather(futures) if e.size]
    return components(np.concatenate(edges) if edges else np.zeros((0, 2), np.int64))


def stage_outputs(plan: ScenePlan, groups: dict[int, int], extra: dict[str, Any]):
    """Stages 6–7: whole objects with real-unit measures (:mod:`pipeline.stages.assemble`), written to GeoParquet,
    GeoPackage and QuPath GeoJSON staged for publishing (:mod:`pipeline.io.outputs`). Returns
    ``(staging, summary)``; other output writers add their files to ``staging`` before
    ``staging.publish(summary)`` (see :mod:`pipeline.io.publish`)."""
    info, c = plan.info, plan.cfg
    n_tiles = len(plan.grid)
    regularize = c.regularize.model_dump() if c.regularize else None
    summary = {
        "seamline_version": __version__,
        "input": info.path,
        "width": info.width,
        "height": info.height,
        "bands": info.count,
        "dtype": info.dtype,
        "transform": list(info.transform),
        "pixel_size_um": list(info.pixel_size_um) if info.pixel_size_um else None,
        "source": _source_summary(plan),
        "object_scale": plan.scale,
        "tiling": {"tile": c.tile, "halo": c.halo, "grid": list(plan.grid.shape), "tiles": len(plan.grid)},
        "model": {"spec": c.model, "path": plan.model, "id": plan.model_id, "class": plan.class_name, "tta": c.tta,
                  **({"classes": plan.class_names} if plan.class_names else {})},
        "warnings": plan.warnings,
        "workdir": plan.workdir,
        "input_version": plan.input_version,
        "fingerprint": plan.fingerprint,
        "settings_fingerprint": plan.settings_fingerprint,
        **extra,
    }
    staging = Staging(plan.out_dir, plan.stem)
    try:
        batches = object_batches(plan.workdir, n_tiles, groups, info, plan.class_name, plan.class_names, regularize,
                                 limits=object_limits(plan.metadata))
        summary = write_outputs(batches, info, staging, summary, output_measurements(info, regularize),
                                geojson=c.qupath_geojson, model_classes=plan.model_classes, class_name=plan.class_name)
        valid = valid_pixels(plan.workdir, n_tiles)
        summary.update(scene_density(summary["objects"], valid, info, summary.get("tissue_px")), valid_px=valid)
    except BaseException:
        staging.discard()
        raise
    return staging, summary


def skipping_summary(plan: ScenePlan, stats: dict) -> dict[str, Any]:
    """Summary entries for the scene statistics and the tiles skipped (no tissue, all nodata)."""
    skip = stats.get("skip", {})
    n_t, n_n = len(skip.get("tissue", [])), len(skip.get("nodata", []))
    return {"stats": {k: v for k, v in stats.items() if k not in ("skip", "tissue")},
            "tiles_skipped": {"tissue": n_t, "nodata": n_n, "total": n_t + n_n,
                              "fraction": round((n_t + n_n) / len(plan.grid), 4)},
            # tissue detection: whether it ran and why (tissue.enabled auto: on for slides), what it skipped
            "tissue": stats.get("tissue") or {"ran": False, "why": plan.input.tissue["why"] if plan.input else "off"},
            # tissue area in working pixels (pixel_stats.scene_density: objects per mm² of tissue)
            **({"tissue_px": int(stats["tissue"]["working_px"])} if stats.get("tissue") else {})}


def _source_summary(plan: ScenePlan) -> dict[str, Any]:
    """What was read: backend, levels, channels, the resolution rule's choice, the stain, tile skipping."""
    info, inp = plan.info, plan.input
    out: dict[str, Any] = dict(inp.source) if inp is not None else {}
    out.update({"level": info.level, "resample": info.resample, "scale": info.scale,
                "level0": list(info.level0) if info.level0 else [info.height, info.width],
                "channels_used": list(info.channel_names) if info.channel_names else None,
                "stain": inp.stain if inp is not None else None})
    return out


def run_report(plan: ScenePlan, summary: dict, staging) -> dict[str, str]:
    """Stage 8: quicklook PNG (+ COG when georeferenced) and the HTML report, from the zarr store and the staged
    GeoParquet file, into ``staging`` (published with the rest) — so before the work folder is removed."""
    stem = plan.stem
    final = {k: storage.join(plan.out_dir, n) for k, n in staging.entries.items()}
    try:
        return report_scene(plan.zarr_path, plan.out_dir, stem, {**summary, "outputs": {**summary.get("outputs", {}), **final}},
                            plan.cfg.tile, plan.model_classes, plan.info.nodata,
                            parquet=os.path.join(staging.dir, f"{stem}.parquet"), dest=staging.path)
    except Exception as exc:  # noqa: BLE001 - the objects are written; a picture must not fail the run
        msg = f"quicklook/report not written: {type(exc).__name__}: {exc}"
        log.warning(msg)
        summary["warnings"] = [*summary.get("warnings", []), msg]
        return {}


def remove_workdir(plan: ScenePlan) -> None:
    """Delete the work folder (and, locally, its parent ``.seamline-work`` when it is empty)."""
    storage.remove(plan.workdir, recursive=True)
    if storage.is_local(plan.workdir):
        try:
            Path(storage.local_path(plan.workdir)).parent.rmdir()
        except OSError:
            pass


def done_outputs(input_path: str, out_dir: str | Path, settings: Settings, stem: str) -> dict | None:
    """The published summary when ``<stem>``'s outputs in ``out_dir`` verify and were made from this version of
    the input with these settings (the scene is done), else None."""
    try:
        version = storage.version_of(str(input_path))
    except (OSError, InputError, ValueError):
        return None  # a missing input: plan_scene says so
    return current_outputs(str(out_dir), stem, version, settings.fingerprint)


def _plain(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    return fn


def segment_scene(input_path: str, out_dir: str | Path, cfg: SegmentConfig, client=None, *, force: bool = False,
                  stem: str | None = None, task: StageWrapper | None = None) -> dict:
    """Run every stage for one scene; returns the run summary (also published as ``<stem>.json``, last).

    ``client``: a Dask client to use (else one is started from ``cfg`` and closed after the scene). A scene
    whose published outputs are current for this input version and these settings is not run again: its
    summary is returned with ``skipped: True``, unless ``force``. ``stem`` names the outputs (default: the
    input's name). ``task(fn, name)`` wraps each stage call (the flows make each a Prefect task)."""

    step = task or _plain
    asked = cfg
    settings = resolve_settings(cfg)
    cfg = settings.cfg
    stem = stem or stem_of(str(input_path))
    if not force:
        done = done_outputs(input_path, out_dir, settings, stem)
        if done is not None:
            log.info("%s: outputs in %s are current for this input and these settings, skipped (force to redo)",
                     input_path, out_dir)
            return {**done, "skipped": True}
    choice = choose_default_model(str(input_path), asked)  # --model default: by the scene's modality (#20)
    if choice is not None:
        settings = resolve_settings(asked, choice.model)
        cfg = settings.cfg
    progress = current()
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    with TreeMemoryWatch() as mem:
        plan = step(plan_scene, "plan")(str(input_path), str(out_dir), settings, stem)
        progress.scene = plan.stem
        ctx = cluster_client(cfg) if client is None else contextlib.nullcontext(client)
        with ctx as cl:
            t = time.perf_counter()
            with progress.stage("ingest + statistics"):
                stats = step(run_ingest, "ingest+stats")(cl, plan)
            timings["ingest_and_stats"] = time.perf_counter() - t
            job = make_job(plan, stats)
            t = time.perf_counter()
            with progress.stage(f"segment {len(job.grid)} tiles"):
                tiles = step(run_tiles, "segment-tiles")(cl, plan, job)
            timings["tiles"] = time.perf_counter() - t
            t = time.perf_counter()
            with progress.stage("stitch"):
                groups = step(run_stitch, "stitch")(cl, plan, job)
            timings["stitch"] = time.perf_counter() - t
            label_image = None
            if cfg.label_image:  # on the workers, chunk by chunk, from the window labels and the stitch groups
                t = time.perf_counter()
                # Written into the work folder (reachable from every worker, local or a bucket) and published
                # with the other outputs.
                with progress.stage("label image"):
                    label_image = step(write_label_image, "label-image")(
                        cl, plan.workdir, plan.grid, groups, plan.info, storage.join(plan.workdir, f"{plan.stem}.ome.zarr"))
                timings["label_image"] = time.perf_counter() - t
        t = time.perf_counter()
        extra = {"worker_seconds": tiles["timings"], "tiles_processed": tiles["tiles"],
                 "tiles_resumed": tiles["skipped"], "joined_objects": len(set(groups.values())),
                 **skipping_summary(plan, stats), **({"model_choice": choice.as_dict()} if choice else {})}
        with progress.stage("write outputs"):
            staging, summary = step(stage_outputs, "write")(plan, groups, extra)
        if label_image is not None:
            staging.add_url("ome_zarr", f"{plan.stem}.ome.zarr", label_image["path"])
            summary["label_image"] = {**label_image, "path": storage.join(plan.out_dir, f"{plan.stem}.ome.zarr")}
        timings["write"] = time.perf_counter() - t
    with staging:  # the verdict before the report (its banner) and the publishing (the gate); a refusal discards all
        summary["quality"] = q = step(assess_run, "quality")(summary, os.path.join(staging.dir, f"{plan.stem}.parquet"),
                                                             plan.metadata)
        if refuses(q, cfg.quality.fail_on):
            if not cfg.keep_intermediate:
                remove_workdir(plan)
            raise QualityGateError(f"{quality_line(plan.stem, q)} — not published (quality.fail_on: {cfg.quality.fail_on})",
                                   q["verdict"])
        if cfg.report:
            t = time.perf_counter()
            with progress.stage("quicklook + report"):
                summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
                step(run_report, "quicklook+report")(plan, summary, staging)
            timings["report"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_all
        summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        summary["megapixels_per_s"] = round(plan.info.width * plan.info.height / 1e6 / timings["total"], 3)
        # This process and its children: driver + LocalCluster scheduler and workers (a remote cluster's
        # workers are not counted; the summary says which).
        summary["peak_rss_process_tree_mb"] = round(mem.peak_bytes / 2**20, 1)
        summary["cluster"] = "remote" if cfg.scheduler else cfg.cluster.kind
        summary["orchestrator"] = getattr(step, "orchestrator", "none")  # "prefect" under the flows
        summary = step(staging.publish, "publish")(summary)  # every output copied, then <stem>.json last
    if not cfg.keep_intermediate:
        remove_workdir(plan)
    (progress.note if q["verdict"] == "ok" else log.warning)(quality_line(plan.stem, q))
    return summary


@dataclass
class BatchResult:
    """What :func:`segment_batch` did: one summary per finished or skipped scene, one row per input."""

    summaries: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)
    table: dict[str, str] | None = None  # summary.parquet / summary.csv
    index: str | None = None  # index.html


def check_inputs(inputs: list[str], cfg: SegmentConfig) -> list[str]:
    """Open every input (any format; bad channels fail here too) before any work, so a bad file in a batch
    leaves no half-made outputs; returns the output stem of each (:func:`pipeline.io.sources.unique_stems`)."""

    for p in inputs:
        with open_source(p, cfg.reader, cfg.series) as src:
            resolve_channels(src, cfg.bands if cfg.bands is not None else cfg.channels,
                             "bands" if cfg.bands is not None else "channels")
    return unique_stems(inputs)


def segment_batch(inputs: list[str], out_dir: str, cfg: SegmentConfig, *, force: bool = False,
                  task: StageWrapper | None = None, on_scene: Callable[[dict], None] | None = None) -> BatchResult:
    """Several scenes on one Dask cluster (the model stays loaded on the workers between scenes), each through
    :func:`segment_scene`: what ``seamline segment`` and the batch flow run.

    Inputs are checked first; equal file names get distinct output stems (``caseA_slide``, ``caseB_slide``).
    A scene that fails is recorded and the others still run. ``DIR/summary.parquet`` and ``.csv`` gain one
    row per input (rows of earlier calls into the same folder are kept, a scene's row replaced), and
    ``DIR/index.html`` lists every scene of this batch. The cluster starts only if a scene needs running."""

    settings = resolve_settings(cfg)  # a broken checkpoint or a tile the model cannot use fails before any work
    cfg = settings.cfg
    stems = check_inputs(inputs, cfg)
    if storage.is_local(out_dir) and Path(storage.local_path(out_dir)).exists() and not Path(storage.local_path(out_dir)).is_dir():
        raise ParameterError(f"--out {out_dir}: exists and is not a folder; pass a folder path")
    check_writable(out_dir, "--out")  # a read-only bucket or a refusing endpoint: one line before any work
    result = BatchResult()
    with contextlib.ExitStack() as stack:
        client = None
        for p, stem in zip(inputs, stems):
            if client is None and (force or done_outputs(p, out_dir, settings, stem) is None):
                client = stack.enter_context(cluster_client(cfg))
            try:
                s = segment_scene(p, out_dir, cfg, client=client, force=force, stem=stem, task=task)
            except Exception as exc:  # noqa: BLE001 - one failed slide does not stop the batch; it is reported, then raised
                result.errors.append((p, exc))
                result.rows.append(failed_row(p, stem, str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                                              getattr(exc, "verdict", None)))
                continue
            result.rows.append(batch_row(s))
            result.summaries.append(s)
            if on_scene is not None:
                on_scene(s)
    if any(r["status"] != "failed" for r in result.rows):  # nothing finished: nothing written
        result.table = write_batch_summary(out_dir, result.rows)
    made = [s for s in result.summaries if not s.get("skipped")]
    if len(result.summaries) > 1 and cfg.report and made:
        result.index = _write_index(out_dir, result.summaries, write_index)
    return result


def _write_index(out_dir: str, summaries: list[dict], write_index) -> str:
    if storage.is_local(out_dir):
        return str(write_index(Path(storage.local_path(out_dir)), summaries))
    import tempfile

    with tempfile.TemporaryDirectory() as d:  # rendered locally, then one object (thumbnails from local quicklooks)
        page = write_index(Path(d), summaries)
        url = storage.join(out_dir, page.name)
        storage.write_bytes(url, page.read_bytes())
    return url
