"""``seamline segment`` configuration: YAML file, then command-line flags on top. Unknown keys are errors."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import ParameterError

__all__ = ["SegmentConfig", "ClassicalParams", "SlurmClusterParams"]


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
    tolerance: float = Field(default=0.5, gt=0)  # Douglas-Peucker tolerance in map units (m; um or px without a CRS)
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


class SegmentConfig(_Strict):
    """Defaults are for a 2-core, 24 GB machine; see configs/*.yaml for examples."""

    model: str = "default"  # 'classical', 'default' (shipped nuclei model) or a checkpoint path
    tile: int = 1024
    halo: int | None = None  # None: the model's receptive field (checkpoint metadata), 64 for classical
    workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)  # task threads per worker; torch uses the worker's share of cores
    scheduler: str | None = None  # address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786
    # Where the workers come from: a LocalCluster (default), or SLURM jobs ({kind: slurm, …}); not with scheduler
    cluster: LocalClusterParams | SlurmClusterParams = Field(default_factory=LocalClusterParams, discriminator="kind")
    batch_size: int = Field(default=4, ge=1)  # tiles per model call
    tiles_per_task: int = Field(default=4, ge=1)
    device: str = "auto"
    # CPU forward pass: eager (PyTorch channels-last float32), bf16, compile (torch.compile), onnx (ONNX Runtime);
    # see docs/BENCHMARKS.md for which is fastest here and keeps the validation AP
    inference: Literal["eager", "bf16", "compile", "onnx"] = "onnx"
    tta: bool = False  # learned models: average over 4 mirror images (4x slower, a little more accurate)
    # Per LocalCluster worker: Dask pauses a worker near it and restarts one that exceeds it. "auto" shares
    # the machine's memory between the workers; a learned model on 4096-px tiles needs ~6 GB per CPU worker.
    memory_limit: str = "auto"
    class_name: str | None = None  # default: the model's class
    pixel_size_um: tuple[float, float] | None = None  # override the TIFF's physical pixel size
    reader: Literal["auto", "gdal", "openslide", "tifffile", "zarr"] = "auto"  # which library reads the input
    series: int | None = Field(default=None, ge=0)  # image of a multi-image OME-TIFF / OME-Zarr container
    channels: list[str | int] | None = None  # names (OME, band descriptions, red/green/blue) or 1-based indices
    bands: list[str | int] | None = None  # the same as channels (satellite wording: bands: [4, 3, 2]); not both
    single_stain: Literal["auto", "on", "off"] = "auto"  # RGB render of one stain (R = G = 0) -> one grey channel
    skip_nodata: bool = True  # skip tiles that are entirely nodata / alpha 0 / NaN before the model
    resolution: ResolutionParams = Field(default_factory=ResolutionParams)
    tissue: TissueParams = Field(default_factory=TissueParams)
    # Objects' diameter in input px: the scene is rescaled so they come out the model's object_diameter_px.
    # None: from the pixel size, else native; "estimate": estimated from the image when there is no pixel
    # size; "native": no rescaling (stages/objectscale.py).
    object_diameter: float | Literal["native", "estimate"] | None = None
    classical: ClassicalParams = Field(default_factory=ClassicalParams)
    regularize: RegularizeParams | None = None  # e.g. {classes: [building]}: squared building outlines, area_raw kept
    stats: StatsParams = Field(default_factory=StatsParams)
    keep_intermediate: bool = False
    qupath_geojson: bool = True  # <stem>.geojson: detections with measurements, QuPath's import format
    label_image: bool = True  # <stem>.ome.zarr: OME-NGFF multiscale label image (napari-ome-zarr, QuPath)
    report: bool = True  # <stem>.quicklook.png (+ .tif when georeferenced) and <stem>.html
    # Parent of each scene's work folder (<workdir>/<stem>): a path or URL (s3://…) — a fast local disk on one
    # machine, a bucket on a cluster whose nodes share no disk. Default: OUT/.seamline-work
    workdir: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "SegmentConfig":
        from pipeline.stages.tiling import validate_tiling

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
