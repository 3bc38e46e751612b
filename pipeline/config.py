"""``seamline segment`` configuration: YAML file, then command-line flags on top. Unknown keys are errors."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import ParameterError
from pipeline.stages.grid import validate_tiling

__all__ = ["SegmentConfig", "ClassicalParams", "QualityParams", "SlurmClusterParams", "result_fields"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _doc(default=..., doc: str = "", unit: str | None = None, **kw):
    """A field of a config section, with its documentation (docs/CONFIG.md is generated from it)."""
    extra = {"unit": unit} if unit else None
    if callable(default) and not isinstance(default, (int, float, str, bool)):
        return Field(default_factory=default, description=doc, json_schema_extra=extra, **kw)
    return Field(default=default, description=doc, json_schema_extra=extra, **kw)


class ClassicalParams(_Strict):
    """The classical model: a scene-global threshold, a distance-transform watershed, hysteresis for dim objects."""

    sigma: float = _doc(1.0, "Gaussian smoothing before the threshold", "px", ge=0)
    h: float = _doc(1.5, "minimum depth of a distance-transform peak to seed an object", "px", gt=0)
    min_area: int = _doc(8, "objects smaller than this are dropped", "px", ge=1)
    merge_ratio: float = _doc(0.75, "basins whose saddle reaches this share of the lower peak are one object", gt=0, le=1)
    threshold: float | None = _doc(None, "foreground threshold on the normalised intensity (0..1); unset: Otsu on the scene sample")
    low_ratio: float | None = _doc(
        0.5, "hysteresis for dim objects: regions above a low threshold this far from the background level up to "
             "`threshold` are objects too; null or 1: off", gt=0, le=1)
    low_threshold: float | None = _doc(None, "the hysteresis low threshold itself (normalised 0..1), instead of low_ratio")


class StatsParams(_Strict):
    """The scene normalisation: percentiles of a scene-wide sample (one per scene, never per tile)."""

    low: float = _doc(1.0, "lower percentile (maps to 0)", "%", ge=0, lt=100)
    high: float = _doc(99.8, "upper percentile (maps to 1; robust to empty background)", "%", gt=0, le=100)


class RegularizeParams(_Strict):
    """Building outline regularisation (pipeline/stages/regularize.py); off unless set."""

    classes: list[str] = _doc(lambda: ["building"], "only objects of these classes are regularised")
    tolerance: float = _doc(0.5, "Douglas-Peucker tolerance: metres on the ground in any CRS (µm, or px, without one)",
                            "m", gt=0)
    angle_tolerance: float = _doc(15.0, "edges this close to the dominant axes are squared", "deg", ge=0, lt=45)
    min_iou: float = _doc(0.8, "the squared outline must fit the original this well, else it is only simplified", ge=0, le=1)


class ResolutionParams(_Strict):
    """The resolution rule's overrides (pipeline/stages/resolution.py)."""

    pixel_size: tuple[float, Literal["m", "um"]] | None = _doc(
        None, "the model's training pixel size [value, m|um] (default: the checkpoint's)")
    level: int | None = _doc(None, "read this pyramid level as stored (overrides the rule)", ge=0)


class TissueParams(_Strict):
    """Tile skipping by tissue detection on a low-resolution level (pipeline/stages/skipping.py)."""

    enabled: bool | Literal["auto"] = _doc(
        "auto", "auto: on for slides (whole-slide formats, OME-TIFF/OME-Zarr, any image with a pixel size in µm), "
                "off for georeferenced scenes and images without a pixel size")
    min_fraction: float = _doc(0.02, "tiles with less tissue than this share are skipped", ge=0, le=1)
    method: Literal["auto", "saturation", "intensity"] = _doc(
        "auto", "auto: saturation for brightfield (colour), else intensity (fluorescence)")
    min_size_um: float = _doc(4.0, "specks smaller than this (equivalent diameter) are not tissue", "um", ge=0)
    dilate_um: float = _doc(20.0, "the mask is grown this much so tissue rims and sparse nuclei are kept", "um", ge=0)


class QualityParams(_Strict):
    """The quality verdict of every run (pipeline/stages/quality.py; docs/MODEL.md, "Quality verdict")."""

    # unreliable: a run whose verdict is unreliable exits with code 3 and publishes nothing; doubtful: also a
    # doubtful one; null: always publish (the verdict is in the summary, the report and the batch table)
    fail_on: Literal["unreliable", "doubtful"] | None = None


class SlurmClusterParams(_Strict):
    """``cluster: {kind: slurm, …}``: Dask workers as SLURM jobs through dask-jobqueue's ``SLURMCluster``
    (``pip install 'seamline[slurm]'``). The driver runs where ``seamline`` is started (a login node or a job
    of its own) and submits ``jobs`` worker jobs; the job script is ``seamline cluster-script --config FILE``.
    Credentials are never written into the job script: sbatch passes the submitting environment on
    (SLURM's default ``--export=ALL``)."""

    kind: Literal["slurm"] = _doc(..., "slurm")
    jobs: int = _doc(1, "worker jobs to submit", ge=1)
    queue: str | None = _doc(None, "the partition (#SBATCH -p)")
    account: str | None = _doc(None, "the account (#SBATCH -A)")
    cores: int = _doc(8, "CPU cores per job", ge=1)
    processes: int = _doc(1, "Dask worker processes per job (one per GPU)", ge=1)
    memory: str = _doc("32GB", "memory per job")
    walltime: str = _doc("04:00:00", "wall time per job")
    gpus: int = _doc(0, "GPUs per job (--gres=gpu:N); each worker then gets resources GPU", ge=0)
    job_extra_directives: list[str] = _doc(list, 'more #SBATCH lines, e.g. ["--qos=long"]')
    job_script_prologue: list[str] = _doc(list, 'lines run before the worker, e.g. ["module load cuda", "source .venv/bin/activate"]')
    local_directory: str | None = _doc(None, 'node-local scratch for Dask\'s spill files, e.g. "$TMPDIR"')
    interface: str | None = _doc(None, "network interface of the workers and scheduler, e.g. ib0")
    python: str | None = _doc(None, "the workers' Python (default: the driver's sys.executable)")
    log_directory: str | None = _doc(None, "where SLURM writes the jobs' stdout/stderr")
    start_timeout_s: float = _doc(900, "wait this long for the first worker (queueing time)", "s", gt=0)


class LocalClusterParams(_Strict):
    """``cluster: {kind: local}``: the default, a LocalCluster of ``workers`` processes on this machine."""

    kind: Literal["local"] = _doc("local", "local")


def _setting(default=..., *, results: bool, doc: str, unit: str | None = None, **kw):
    """A :class:`SegmentConfig` field with its documentation and its class: ``results=True`` when changing it
    changes what a run publishes (the objects, their measures, or the set of output files), so it is part of
    the settings fingerprint (:mod:`pipeline.settings`) that keys the work folder, the summary and ``watch``;
    ``results=False`` for how and where the work runs (workers, device, paths). Every field must say which:
    ``tests/test_settings.py`` fails on a field that does not."""
    extra = {"results": results, **({"unit": unit} if unit else {})}
    if isinstance(default, type) and issubclass(default, BaseModel):  # a nested section: a fresh one each time
        return Field(default_factory=default, description=doc, json_schema_extra=extra, **kw)
    return Field(default=default, description=doc, json_schema_extra=extra, **kw)


class SegmentConfig(_Strict):
    """Settings of ``seamline segment``/``watch`` and the flows: a YAML file (``--config``), then command-line
    flags on top. Defaults suit a laptop or a 2-core, 24 GB machine; see configs/*.yaml for examples and
    docs/CONFIG.md (generated from this class) for every key."""

    model: str = _setting("default", results=True,
                          doc="'default' (the shipped nuclei model for the scene's modality: H&E brightfield -> 'nuclei-he', else "
                              "'nuclei', the fluorescence model), 'nuclei', 'nuclei-he', 'classical', 'buildings', 'trees', or a "
                              "checkpoint path")
    tile: int = _setting(1024, results=True, unit="px", doc="tile core size; each tile is read with its halo around it")
    halo: int | None = _setting(None, results=True, unit="px",
                                doc="context around each tile; unset: the model's receptive field (64 for classical)")
    workers: int | None = _setting(None, ge=1, results=False,
                                   doc="LocalCluster worker processes; unset: as many as the cores and the memory allow")
    threads_per_worker: int = _setting(1, ge=1, results=False,
                                       doc="task threads per worker (the model's forward pass uses the worker's share of cores)")
    scheduler: str | None = _setting(None, results=False,
                                     doc="address of an existing Dask scheduler (tcp://host:8786) instead of a LocalCluster")
    cluster: LocalClusterParams | SlurmClusterParams = _setting(
        LocalClusterParams, discriminator="kind", results=False,
        doc="where the workers come from: {kind: local} (default) or {kind: slurm, ...} (dask-jobqueue); not with scheduler")
    batch_size: int | None = _setting(
        None, ge=1, results=False,
        doc="windows per forward pass; unset: 1 on a CPU (batching gains nothing there and each window of the batch "
            "adds about 1 GB per worker at 1536 px), 4 on a GPU")
    tiles_per_task: int = _setting(4, ge=1, results=False, doc="tiles per Dask task (fewer, larger tasks)")
    device: str = _setting("auto", results=False, doc="auto (CUDA when present), cpu or cuda")
    inference: Literal["eager", "bf16", "compile", "onnx"] = _setting(
        "onnx", results=True,
        doc="CPU forward pass: onnx (ONNX Runtime), eager (PyTorch float32), bf16, compile (torch.compile); docs/BENCHMARKS.md")
    tta: bool = _setting(False, results=True, doc="learned models: average over 4 mirror images (4x slower, a little more accurate)")
    memory_limit: str = _setting("auto", results=False,
                                 doc="per LocalCluster worker: Dask pauses a worker near it, restarts one above it; auto shares the machine's memory")
    class_name: str | None = _setting(None, results=True, doc="class name of the objects; unset: the model's")
    pixel_size_um: tuple[float, float] | None = _setting(None, results=True, unit="um",
                                                         doc="override the image's physical pixel size (x, y)")
    reader: Literal["auto", "gdal", "openslide", "tifffile", "zarr"] = _setting(
        "auto", results=True, doc="which library reads the input; auto decides by content")
    series: int | None = _setting(None, ge=0, results=True, doc="image of a multi-image OME-TIFF / OME-Zarr container (default 0)")
    channels: list[str | int] | None = _setting(None, results=True,
                                                doc="channels the model gets: names (OME, band descriptions, red/green/blue) or 1-based indices")
    bands: list[str | int] | None = _setting(None, results=True, doc="the same as channels, in satellite wording (bands: [4, 3, 2]); not both")
    single_stain: Literal["auto", "on", "off"] = _setting(
        "auto", results=True, doc="an RGB render of one stain (R = G = 0, e.g. DAPI in an NDPI) read as one grey channel")
    skip_nodata: bool = _setting(True, results=True, doc="skip tiles that are entirely nodata / alpha 0 / NaN before the model")
    resolution: ResolutionParams = _setting(ResolutionParams, results=True,
                                            doc="the resolution rule's overrides: pixel_size [value, m|um], level")
    tissue: TissueParams = _setting(TissueParams, results=True, doc="tile skipping by tissue detection on a low-resolution level")
    # Objects' diameter in input px: the scene is rescaled so they come out the model's object_diameter_px.
    object_diameter: float | Literal["native", "estimate"] | None = _setting(
        None, results=True, unit="px",
        doc="objects' diameter in input px (rescaled to the model's); unset: from the pixel size, else native; "
            "'estimate': estimated from the image; 'native': no rescaling")
    classical: ClassicalParams = _setting(ClassicalParams, results=True, doc="the classical model's parameters")
    regularize: RegularizeParams | None = _setting(None, results=True,
                                                   doc="squared building outlines, e.g. {classes: [building]} (area_raw kept)")
    stats: StatsParams = _setting(StatsParams, results=True, doc="percentiles of the scene normalisation (low, high)")
    keep_intermediate: bool = _setting(False, results=False, doc="keep the work folder (zarr store, tile parts) after the run")
    qupath_geojson: bool = _setting(True, results=True, doc="write <stem>.qupath.geojson (QuPath detections with measurements)")
    label_image: bool = _setting(True, results=True, doc="write <stem>.ome.zarr (OME-NGFF multiscale label image)")
    report: bool = _setting(True, results=True, doc="write <stem>.quicklook.png (+ .tif when georeferenced) and <stem>.html")
    diff: Literal["off", "previous"] = _setting(
        "off", results=False,
        doc="watch: diff each new version of a scene against its last done version (<stem>.changes.*, counts in the ledger)")
    quality: QualityParams = _setting(QualityParams, results=True,
                                      doc="{fail_on: unreliable|doubtful}: refuse to publish (exit code 3) a run with that verdict")
    workdir: str | None = _setting(None, results=False,
                                   doc="parent of each scene's work folder (path or URL); default OUT/.seamline-work")

    @model_validator(mode="after")
    def _check(self) -> "SegmentConfig":
        validate_tiling(self.tile, 0 if self.halo is None else self.halo)
        if self.scheduler and self.cluster.kind != "local":
            raise ParameterError(f"scheduler ({self.scheduler}) and cluster: {{kind: {self.cluster.kind}}} both say where the "
                                 "workers come from; give only one of them")
        if self.channels is not None and self.bands is not None:
            raise ParameterError("channels and bands are the same setting; give only one of them")
        if isinstance(self.object_diameter, (int, float)) and not self.object_diameter > 0:
            raise ParameterError(f"object_diameter: expected a diameter in pixels > 0 or 'native', found "
                                 f"{self.object_diameter}; measure a typical object across in the input image")
        if self.stats.low >= self.stats.high:
            raise ParameterError(f"stats.low ({self.stats.low}) must be below stats.high ({self.stats.high})")
        return self


def result_fields() -> set[str]:
    """The :class:`SegmentConfig` fields whose value changes what a run publishes (``results=True``)."""
    return {n for n, f in SegmentConfig.model_fields.items() if (f.json_schema_extra or {}).get("results")}
