"""One scene through every stage. Each stage is a plain function; :func:`segment_scene` chains them and
``flows/`` wires the same functions into Prefect tasks.

The work folder (``OUT/.seamline-work/<stem>``, or ``<workdir>/<stem>``) holds the zarr store, the per-tile
parts and window labels. Like the input and the outputs it may be a local path or any fsspec URL
(:mod:`pipeline.io.storage`): on a cluster whose nodes share no disk, a bucket. It is keyed by a fingerprint of the input and the settings that change results: a re-run after a failure
resumes (ingest is skipped when complete, finished tiles are skipped); a run with other settings starts over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.config import SegmentConfig
from pipeline.errors import CheckpointError, InputError, ParameterError
from pipeline.io import storage
from pipeline.io.raster import SceneInfo
from pipeline.stages.tiles import TileJob
from pipeline.stages.tiling import TileGrid

WINDOW_CHUNK = 256

log = logging.getLogger("seamline")

__all__ = ["ScenePlan", "resolve_halo", "check_model", "plan_scene", "run_ingest", "run_tiles", "run_stitch", "stage_outputs", "run_write", "run_report", "segment_scene"]


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
    fingerprint: str = ""  # input version + settings that change results (the work folder's key)
    input_version: str | None = None  # size + ETag/mtime of the input (pipeline.io.storage.version_of)
    scale: dict | None = None  # the object-scale decision (pipeline.stages.objectscale.ObjectScale.as_dict)
    class_names: list[str] | None = None  # a multi-class model's classes (each object gets its most probable)

    @property
    def zarr_path(self) -> str:
        return storage.join(self.workdir, "scene.zarr")

    @property
    def grid(self) -> TileGrid:
        return TileGrid(self.info.height, self.info.width, self.cfg.tile, self.cfg.halo)


def _fingerprint(info: SceneInfo, cfg: SegmentConfig, model: str) -> str:
    src = info.path
    try:
        src_id = f"{src}:{storage.version_of(src)}"
    except (OSError, InputError, ValueError):
        src_id = src
    relevant = cfg.model_dump(include={"tile", "halo", "classical", "stats", "pixel_size_um", "tta", "inference",
                                       "tissue", "skip_nodata", "object_diameter"})
    reading = info.as_attrs()  # reader, series, level, resample, channels: what the store holds
    return hashlib.sha256(json.dumps([src_id, relevant, reading, model, __version__], sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_model(spec: str) -> tuple[str, dict | None]:
    """Resolve ``--model`` and, for a checkpoint, read its metadata and the header of its weights here on the
    driver, so that a broken checkpoint fails before any cluster or work folder exists. Returns (model, metadata)."""
    from pipeline.models.checkpoint import checkpoint_paths, load_metadata
    from pipeline.models.registry import resolve_model_spec

    model = resolve_model_spec(spec)
    if model == "classical":
        return model, None
    md = load_metadata(model)
    weights, _ = checkpoint_paths(model)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="numpy") as f:  # reads and checks the header only
            f.keys()
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint weights {weights}: not a readable safetensors file ({exc}); "
                              "re-copy it or re-save it with seamline train") from None
    return model, md


DEFAULT_HALO = 64


def resolve_halo(cfg: SegmentConfig, model: str, md: dict | None) -> tuple[int, list[str]]:
    """The halo to use, and warnings. Unset, it is the model's receptive field (checkpoint metadata), so a
    tiled run sees the context a whole-image run sees; the classical model needs the size of the largest
    object that must split exactly as in a whole-image run (default 64)."""
    rf = int(md.get("receptive_field_px", DEFAULT_HALO)) if md else None
    name = Path(model).name
    if md:
        # The network downsamples by 2**depth: shifted by anything else, a window sees the image on another
        # pixel grid than a whole-image run does, and its heads change by up to 0.13 (docs/MODEL.md), halo or not.
        stride = 2 ** int(md.get("encoder_depth", 5))
        if cfg.tile % stride:
            lo, hi = cfg.tile // stride * stride, -(-cfg.tile // stride) * stride
            use = f"--tile {lo} or {hi}" if lo > 0 else f"--tile {hi}"
            raise ParameterError(f"--tile {cfg.tile}: model {name} needs tiles that are a multiple of {stride} px (its "
                                 f"downsampling), or tiles see another pixel grid than a whole-image run and objects "
                                 f"at seams change; use {use}")
    if cfg.halo is None:
        halo = rf or DEFAULT_HALO
        if halo >= cfg.tile:
            raise ParameterError(f"--tile ({cfg.tile}) must be larger than the halo ({halo} px, the receptive field of "
                                 f"model {name}); raise the tile size or pass a smaller --halo")
        return halo, []
    if rf and cfg.halo < rf:
        return cfg.halo, [f"--halo {cfg.halo} is below the receptive field of model {name} ({rf} px): objects near "
                          f"tile seams can come out slightly different from a whole-image run; use --halo {rf}"]
    return cfg.halo, []


def check_writable(url: str, what: str) -> None:
    """Write and delete one small object, so a read-only bucket or missing credentials fail before the work."""
    probe = storage.join(url, f".seamline-probe-{uuid.uuid4().hex[:12]}")
    try:
        storage.write_bytes(probe, b"")
        storage.remove(probe)
    except InputError:
        raise
    except Exception as exc:  # botocore/aiohttp raise their own types for endpoint and credential errors
        raise storage.storage_error(f"{what} {url}", exc, "writing a test object") from None


def plan_scene(input_path: str, out_dir: str | Path, cfg: SegmentConfig) -> ScenePlan:
    """Validate the input and the model, and prepare (or resume) the work folder. No heavy work."""
    from pipeline.stages.inputs import plan_input

    model, md = check_model(cfg.model)
    name = Path(model).name if md else model
    inp = plan_input(input_path, cfg, md, name)
    scale = object_scale(inp, cfg, md)
    if scale.factor != 1.0:  # the object-size hook of the resolution rule: level-0 px per working px
        inp = plan_input(input_path, cfg, md, name, extra_scale=1.0 / scale.factor)
    info = inp.info
    halo, warnings = resolve_halo(cfg, model, md)
    warnings = [*scale.warnings, *inp.warnings, *warnings]
    cfg = cfg.model_copy(update={"halo": halo})
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
            raise InputError(f"input {input_path}: {info.count} bands, but model {Path(model).name} expects {bands} (or 1); pick another model")
    out = str(out_dir)
    workdir = storage.join(cfg.workdir or storage.join(out, ".seamline-work"), info.stem)
    check_writable(out, "--out")
    fp = _fingerprint(info, cfg, model)
    manifest = storage.join(workdir, "manifest.json")
    try:
        same = json.loads(storage.read_text(manifest)).get("fingerprint") == fp
        fresh = False
    except (OSError, json.JSONDecodeError):
        same, fresh = False, True
    try:
        if not same:
            storage.remove(workdir, recursive=True)  # other settings, other input version, or a broken start
            storage.ensure_dir(storage.join(workdir, "parts"))
            storage.write_text(manifest, json.dumps({"fingerprint": fp, "input": info.path}))
    except InputError:
        raise
    except Exception as exc:
        raise storage.storage_error(f"work folder {workdir}", exc, "writing" if fresh else "resetting") from None
    try:
        version = storage.version_of(info.path)
    except (OSError, InputError, ValueError):
        version = None
    return ScenePlan(info, out, workdir, cfg, model, class_name, class_names=None if cfg.class_name else class_names, warnings=warnings, input=inp, fingerprint=fp,
                     input_version=version, scale=scale.as_dict())


def object_scale(inp, cfg: SegmentConfig, md: dict | None):
    """The object-diameter route (:mod:`pipeline.stages.objectscale`) for a planned input read at level 0:
    config ``object_diameter``, else the level-0 pixel size, else an estimate from a few full-resolution
    windows of the channels the model gets (read only in that last case)."""
    from pipeline.io.sources import open_source
    from pipeline.stages.objectscale import choose_scale, estimate_scene_diameter

    info = inp.info
    ps = (info.pixel_size_um[0] / info.scale, info.pixel_size_um[1] / info.scale) if info.pixel_size_um else None
    h0, w0 = info.level0 or (info.height, info.width)

    def estimate():
        with open_source(info.path, cfg.reader, cfg.series) as src:
            channels = list(info.channels) if info.channels is not None else None
            return estimate_scene_diameter(lambda r, c, h, w: src.read(0, r, c, h, w, channels), h0, w0, info.nodata)

    return choose_scale(md, ps, cfg.object_diameter, estimate)


def run_ingest(client, plan: ScenePlan) -> dict:
    """Stage 1–2: raster → zarr (parallel, disjoint chunks) and scene statistics from the global lattice."""
    from pipeline.stages.ingest import create_store, ingest_block, plan_ingest, sample_stride, scene_statistics

    stats_file = storage.join(plan.workdir, "stats.json")
    if storage.exists(stats_file):
        return json.loads(storage.read_text(stats_file))
    from pipeline.stages.skipping import needed_tiles, nodata_skip, tile_fractions, tissue_mask, tissue_skip

    info, tile = plan.info, plan.cfg.tile
    grid = plan.grid
    skip_tissue: set[int] = set()
    tissue: dict[str, Any] | None = None
    inp = plan.input
    if plan.cfg.tissue.enabled and inp is not None and inp.overview is not None:
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
    except Exception as exc:  # GDAL read errors from a truncated or corrupt file surface here
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"input {info.path}: reading pixel data failed ({first}); the file looks truncated or corrupt — re-copy or re-export it") from None
    samples = [r[0] for r in results]
    skip_nodata = nodata_skip(grid, [c for r in results for c in r[1]]) - skip_tissue if plan.cfg.skip_nodata else set()
    cl = plan.cfg.classical
    stats = scene_statistics(samples, info.nodata, plan.cfg.stats.low, plan.cfg.stats.high, cl.threshold, cl.low_ratio,
                             cl.low_threshold)
    if plan.model != "classical":  # an H&E model's fixed brightfield normalisation replaces the percentiles (#20)
        from pipeline.models.checkpoint import load_metadata
        from pipeline.stages.stain import fixed_percentiles

        fixed = fixed_percentiles(load_metadata(plan.model), info.dtype, info.count)
        if fixed is not None:
            stats["percentiles"] = [list(p) for p in fixed]
    stats["stride"] = stride
    stats["skip"] = {"tissue": sorted(skip_tissue), "nodata": sorted(skip_nodata)}
    if tissue is not None:
        stats["tissue"] = tissue
    storage.write_text(stats_file, json.dumps(stats))
    return stats


def make_job(plan: ScenePlan, stats: dict) -> TileJob:
    """What every tile task needs. The model's CPU threads: this machine's share per LocalCluster worker; on
    an existing cluster, whatever its workers were started with (torch's default)."""
    from pipeline.stages.dispatch import cores_per_worker

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
    """Stage 3–4: every tile through the model, batched per task; returns summed worker timings."""
    import zarr

    from pipeline.stages.tiles import process_tiles

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

    from pipeline.report.progress import current

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
    """Stage 5: seam edges per tile (parallel), then one connected-components step on the driver."""
    from pipeline.stages.stitch import components, seam_edges

    n = len(job.grid)
    futures = client.map(seam_edges, [job] * n, list(range(n)), pure=False)
    edges = [e for e in client.gather(futures) if e.size]
    return components(np.concatenate(edges) if edges else np.zeros((0, 2), np.int64))


def stage_outputs(plan: ScenePlan, groups: dict[int, int], extra: dict[str, Any]):
    """Stage 6–7: whole objects, real-unit measures, GeoParquet and GeoPackage staged for publishing.
    Returns ``(staging, summary)``; other output writers add their files to ``staging`` before
    ``staging.publish(summary)`` (see :mod:`pipeline.io.publish`)."""
    from pipeline.io.outputs import write_outputs
    from pipeline.io.publish import Staging
    from pipeline.watch import settings_fingerprint

    info, c = plan.info, plan.cfg
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
        "model": {"spec": c.model, "path": plan.model, "class": plan.class_name, "tta": c.tta,
                  **({"classes": plan.class_names} if plan.class_names else {})},
        "warnings": plan.warnings,
        "workdir": plan.workdir,
        "input_version": plan.input_version,
        "fingerprint": plan.fingerprint,
        "settings_fingerprint": settings_fingerprint(c),
        **extra,
    }
    staging = Staging(plan.out_dir, info.stem)
    try:
        summary = write_outputs(plan.workdir, len(plan.grid), groups, info, staging, plan.class_name, summary,
                                geojson=c.qupath_geojson, regularize=c.regularize.model_dump() if c.regularize else None,
                                class_names=plan.class_names)
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
            "tissue": stats.get("tissue"),
            # tissue area in working pixels (measure_objects.scene_density: objects per mm² of tissue)
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


def run_write(plan: ScenePlan, groups: dict[int, int], extra: dict[str, Any]) -> dict:
    """Stage 6–7 and publishing: the outputs, then ``<stem>.json`` last (the commit marker)."""
    staging, summary = stage_outputs(plan, groups, extra)
    with staging:
        return staging.publish(summary)


def run_report(plan: ScenePlan, summary: dict, staging) -> dict[str, str]:
    """Stage 8: quicklook PNG (+ COG when georeferenced) and the HTML report, from the zarr store and the staged
    GeoParquet file, into ``staging`` (published with the rest) — so before the work folder is removed."""
    from pipeline.report.stage import model_classes, run_report as report_scene

    stem = plan.info.stem
    final = {k: storage.join(plan.out_dir, n) for k, n in staging.entries.items()}
    try:
        return report_scene(plan.zarr_path, plan.out_dir, stem, {**summary, "outputs": {**summary.get("outputs", {}), **final}},
                            plan.cfg.tile, model_classes(plan.model), plan.info.nodata,
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


def segment_scene(input_path: str, out_dir: str | Path, cfg: SegmentConfig, client=None) -> dict:
    """Run every stage for one scene; returns the run summary (also published as ``<stem>.json``, last)."""
    from pipeline.stages.dispatch import cluster_client
    from pipeline.memwatch import TreeMemoryWatch

    from pipeline.report.progress import current

    progress = current()
    t_all = time.perf_counter()
    plan = plan_scene(input_path, out_dir, cfg)
    progress.scene = plan.info.stem
    timings: dict[str, float] = {}
    with TreeMemoryWatch() as mem:
        ctx = cluster_client(cfg) if client is None else _null(client)
        with ctx as cl:
            t = time.perf_counter()
            with progress.stage("ingest + statistics"):
                stats = run_ingest(cl, plan)
            timings["ingest_and_stats"] = time.perf_counter() - t
            job = make_job(plan, stats)
            t = time.perf_counter()
            with progress.stage(f"segment {len(job.grid)} tiles"):
                tiles = run_tiles(cl, plan, job)
            timings["tiles"] = time.perf_counter() - t
            t = time.perf_counter()
            with progress.stage("stitch"):
                groups = run_stitch(cl, plan, job)
            timings["stitch"] = time.perf_counter() - t
            label_image = None
            if cfg.label_image:  # on the workers, chunk by chunk, from the window labels and the stitch groups
                from pipeline.io.labels_zarr import write_label_image

                t = time.perf_counter()
                # Written into the work folder (reachable from every worker, local or a bucket) and published
                # with the other outputs.
                with progress.stage("label image"):
                    label_image = write_label_image(cl, plan.workdir, plan.grid, groups, plan.info,
                                                    storage.join(plan.workdir, f"{plan.info.stem}.ome.zarr"))
                timings["label_image"] = time.perf_counter() - t
        t = time.perf_counter()
        extra = {"worker_seconds": tiles["timings"], "tiles_processed": tiles["tiles"],
                 "tiles_resumed": tiles["skipped"], "joined_objects": len(set(groups.values())),
                 **skipping_summary(plan, stats)}
        with progress.stage("write outputs"):
            staging, summary = stage_outputs(plan, groups, extra)
        if label_image is not None:
            staging.add_url("ome_zarr", f"{plan.info.stem}.ome.zarr", label_image["path"])
            summary["label_image"] = {**label_image, "path": storage.join(plan.out_dir, f"{plan.info.stem}.ome.zarr")}
        timings["write"] = time.perf_counter() - t
    with staging:
        if cfg.report:
            t = time.perf_counter()
            with progress.stage("quicklook + report"):
                summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
                run_report(plan, summary, staging)
            timings["report"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_all
        summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        summary["megapixels_per_s"] = round(plan.info.width * plan.info.height / 1e6 / timings["total"], 3)
        # This process and its children: driver + LocalCluster scheduler and workers (a remote cluster's
        # workers are not counted; the summary says which).
        summary["peak_rss_process_tree_mb"] = round(mem.peak_bytes / 2**20, 1)
        summary["cluster"] = "remote" if cfg.scheduler else cfg.cluster.kind
        summary = staging.publish(summary)
    if not cfg.keep_intermediate:
        remove_workdir(plan)
    return summary


class _null:
    def __init__(self, v):
        self.v = v

    def __enter__(self):
        return self.v

    def __exit__(self, *a):
        return False
