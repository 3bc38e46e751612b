"""``seamline segment`` configuration: YAML file, then command-line flags on top. Unknown keys are errors."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import ParameterError
from pipeline.stages.grid import validate_tiling

__all__ = ["SegmentConfig", "ClassicalParams", "QualityParams", "SlurmClusterParams", "result_fields"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassicalParams(_Strict):
    sigma: float = Field(default=1.0, ge=0)
    h: float = Field(default=1.5, gt=0)
    min_area: int = Field(default=8, ge=1)
    merge_ratio: float = Field(default=0.75, gt=0, le=1)
    threshold: float | None = None  # None: Otsu on the scene sample (normalised intensity, 0..1)
    # Hysteresis for dim objects: regions above the low threshold that never reach `threshold` are kept as
    # objects. low_threshold None: low_ratio of the way from the scene's background level up to `threshold`;
    # low_ratio null (or 1): off.
    low_ratio: float | None = Field(default=0.5, gt=0, le=1)
    low_threshold: float | None = None


class StatsParams(_Strict):
    low: float = Field(default=1.0, ge=0, lt=100)
    high: float = Field(default=99.8, gt=0, le=100)


class RegularizeParams(_Strict):
    """Building outline regularisation (pipeline/stages/regularize.py); off unless set."""

    classes: list[str] = Field(default_factory=lambda: ["building"])  # only objects of these classes
    tolerance: float = Field(default=0.5, gt=0)  # Douglas-Peucker tolerance: m on the ground (any CRS); um or px without one
    angle_tolerance: float = Field(default=15.0, ge=0, lt=45)  # edges this close to the dominant axes are squared
    min_iou: float = Field(default=0.8, ge=0, le=1)  # squared outline must fit the original this well, else simplified only


class ResolutionParams(_Strict):
    """The resolution rule's overrides (pipeline/stages/resolution.py)."""

    pixel_size: tuple[float, Literal["m", "um"]] | None = None  # the model's training pixel size (else checkpoint's)
    level: int | None = Field(default=None, ge=0)  # read this pyramid level as stored (overrides the rule)


class TissueParams(_Strict):
    """Tile skipping by tissue detection on a low-resolution level (pipeline/stages/skipping.py)."""

    enabled: bool = False  # on in configs/microscopy.yaml; off for satellite scenes
    min_fraction: float = Field(default=0.02, ge=0, le=1)  # tiles with less tissue than this are skipped
    method: Literal["auto", "saturation", "intensity"] = "auto"  # auto: saturation for brightfield, else intensity
    min_size_um: float = Field(default=4.0, ge=0)  # specks smaller than this (equivalent diameter, µm) are not tissue
    dilate_um: float = Field(default=20.0, ge=0)  # grow the mask (µm) so tissue rims and sparse nuclei are kept


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

    kind: Literal["slurm"]
    jobs: int = Field(default=1, ge=1)  # worker jobs to submit
    queue: str | None = None  # the partition (#SBATCH -p)
    account: str | None = None  # #SBATCH -A
    cores: int = Field(default=8, ge=1)  # CPU cores per job
    processes: int = Field(default=1, ge=1)  # Dask worker processes per job (one per GPU)
    memory: str = "32GB"  # per job
    walltime: str = "04:00:00"
    gpus: int = Field(default=0, ge=0)  # per job: --gres=gpu:N
    job_extra_directives: list[str] = Field(default_factory=list)  # more #SBATCH lines, e.g. ["--qos=long"]
    job_script_prologue: list[str] = Field(default_factory=list)  # e.g. ["module load cuda", "source .venv/bin/activate"]
    local_directory: str | None = None  # node-local scratch for Dask's spill files, e.g. "$TMPDIR"
    interface: str | None = None  # network interface of the workers and scheduler, e.g. ib0
    python: str | None = None  # the workers' Python (default: the driver's sys.executable)
    log_directory: str | None = None  # where SLURM writes the jobs' stdout/stderr
    start_timeout_s: float = Field(default=900, gt=0)  # wait this long for the first worker (queueing time)


class LocalClusterParams(_Strict):
    """``cluster: {kind: local}``: the default, a LocalCluster of ``workers`` processes on this machine."""

    kind: Literal["local"] = "local"


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
                          doc="'default' (shipped nuclei model), 'classical', 'buildings', 'trees', or a checkpoint path")
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
    batch_size: int = _setting(4, ge=1, results=False, doc="tiles per model call")
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
