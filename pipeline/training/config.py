"""Training configuration (``seamline train --config FILE``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.training.grids import VALIDATION_GRID

__all__ = ["TrainConfig", "DataConfig", "ArchConfig", "AugmentConfig", "HardNegativeConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    kind: Literal["folders", "geotiff", "boxes", "consep"] = "folders"
    root: str | None = None  # folders: root with images/ and labels/; consep: root with images/<subset>/, labels/, types/
    subset: str = "train"  # consep: the subfolder (train or test); its tiles are split whole (training/consep.py)
    rasters: list[str] = Field(default_factory=list)  # geotiff / boxes: images (paths or glob patterns)
    vectors: str | list[str] | None = None  # geotiff: polygons (one file, or several: e.g. one per city)
    # geotiff: group rasters into square places of this size (Web Mercator metres, whatever the rasters' CRS: a
    # zoom-19 web-map tile is 76.437) and hold out whole places (pipeline/training/places.py); needs the
    # config's pixel_size (rasters are resampled to it, in ground metres)
    place_size: float | None = Field(default=None, gt=0)
    boxes: list[str] = Field(default_factory=list)  # boxes: VOC XML, CSV or vector files (pipeline/training/boxdata.py)
    tile: int | None = Field(default=None, ge=64)  # boxes: cut larger images into tiles of this size (split unit)
    # hold out exactly these samples instead of a random split; with place_size, a place's name (p<x>_<y>)
    # holds out every resolution of that place
    val_names: list[str] | None = None
    limit: int | None = Field(default=None, gt=0)


class ArchConfig(_Strict):
    architecture: str = "Unet"
    encoder: str = "mobilenet_v2"
    encoder_depth: int = Field(default=5, ge=3, le=5)
    decoder_channels: list[int] = Field(default_factory=lambda: [128, 64, 32, 16, 8])
    in_channels: int = Field(default=3, ge=1)
    heads: list[str] = Field(default_factory=lambda: ["foreground", "boundary", "distance"])


class AugmentConfig(_Strict):
    """Random intensity changes applied to every training crop (the zoom is the top-level ``scale``). The
    defaults are the recipe of the shipped model's two DSB2018 stages; ``configs/train_nuclei_realworld.yaml`` widens them for 20x–60x whole-slide scans.

    Ranges are ``[low, high]``; a ``*_p`` key is the probability that the change is applied to a crop.
    """

    gain: tuple[float, float] = (0.8, 1.2)  # brightness factor after gamma
    gamma: tuple[float, float] = (0.7, 1.4)  # log-uniform
    blur_p: float = Field(default=0.0, ge=0, le=1)  # Gaussian blur: out-of-focus scans, optics of low magnification
    blur_sigma: tuple[float, float] = (0.5, 2.0)  # px, uniform
    noise_p: float = Field(default=0.3, ge=0, le=1)  # additive Gaussian noise (read noise, dim channels)
    noise_sigma: tuple[float, float] = (0.005, 0.03)  # in normalised units, uniform
    offset_p: float = Field(default=0.0, ge=0, le=1)  # a background level: image × (1 − o) + o
    offset: tuple[float, float] = (0.0, 0.15)
    dim_p: float = Field(default=0.0, ge=0, le=1)  # weak stain: contrast multiplied (after the normalisation)
    dim: tuple[float, float] = (0.3, 1.0)
    color_p: float = Field(default=0.0, ge=0, le=1)  # colour cast and saturation (RGB): another site, sensor, season
    channel_gain: tuple[float, float] = (0.85, 1.15)  # each channel's own factor, uniform
    saturation: tuple[float, float] = (0.6, 1.4)  # blend with the grey image: 0 grey, 1 unchanged, uniform
    # Brightfield (H&E) data only (samples with RGB transmission, data.kind consep): stain jitter in HED space
    # (Tellez et al. 2018; pipeline/models/stain.py): each stain's concentration × U(hed_alpha) + U(hed_beta) OD
    hed_p: float = Field(default=0.0, ge=0, le=1)
    hed_alpha: tuple[float, float] = (0.75, 1.25)
    hed_beta: tuple[float, float] = (-0.05, 0.05)


class HardNegativeConfig(_Strict):
    """Crops centred on mined false positives (:mod:`pipeline.training.hardneg`): roads, bare soil, vehicles
    that the network outlines as objects. Only for complete labels (see the module)."""

    share: float = Field(default=0.0, ge=0, le=1)  # share of the crops centred on a mined pixel (0: off)
    every: int = Field(default=10, gt=0)  # re-mine with the current network every N epochs
    threshold: float = Field(default=0.5, gt=0, lt=1)  # foreground probability that counts as "object seen"
    margin_px: int = Field(default=3, ge=0)  # pixels this close to a labelled object are not negatives


class TrainConfig(_Strict):
    data: DataConfig
    model: ArchConfig = Field(default_factory=ArchConfig)
    # The run folder (like every other --out): OUT/<folder name>.safetensors + .json (the checkpoint; --model OUT
    # reads it) and OUT/<folder name>.history.json (per-epoch figures)
    out: str = "runs/model"
    init_from: str | None = None  # continue from a checkpoint (safetensors + JSON) instead of random weights
    classes: list[str] = Field(default_factory=lambda: ["object"])
    epochs: int = Field(default=30, gt=0)
    batch_size: int = Field(default=8, gt=0)
    crop: int = Field(default=256, ge=64)
    crops_per_image: int = Field(default=1, gt=0)
    # How crops are shared between sources (the images tiles were cut from): 0 = every tile alike, so one big
    # image's tiles outnumber a small image's (the default); 1 = every source alike; between, a source of n
    # tiles draws in proportion to n ** (1 - source_balance). For data from several sites of unequal size.
    source_balance: float = Field(default=0.0, ge=0, le=1)
    scale: tuple[float, float] = (0.75, 1.33)  # random zoom of the crops (augmentation)
    # box data: 'projection' (BoxInst projection + background outside boxes, training/boxloss.py) or 'ellipse'
    # (the inscribed ellipse of each box taken as its mask: the simpler baseline)
    box_supervision: Literal["projection", "ellipse"] = "projection"
    # Ground sampling distance the model is trained at, e.g. [0.15, "m"]: written into the checkpoint
    # (seamline segment resamples inputs to it); place-based GeoTIFF data is resampled to it.
    pixel_size: tuple[float, Literal["m", "um"]] | None = None
    lr: float = Field(default=2e-3, gt=0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    hard_negatives: HardNegativeConfig = Field(default_factory=HardNegativeConfig)
    # The network input of brightfield (H&E) data, written into the checkpoint (pipeline/models/stain.py):
    # 'bands' (percentiles per band and scene, as every other model), 'rgb' (transmission, fixed
    # normalisation 0..white) or 'hematoxylin' (the haematoxylin concentration from colour deconvolution)
    input: Literal["bands", "rgb", "hematoxylin"] = "bands"
    contact_weight: float = Field(default=5.0, ge=0)  # extra loss weight on the band between touching objects
    val_every: int = Field(default=1, gt=0)  # validate (and maybe keep the checkpoint) every N epochs and the last
    val_fraction: float = Field(default=0.15, ge=0, lt=1)
    # 'best': keep the epoch with the best validation AP@0.5; 'last': keep the last one (validation only reports:
    # seamline adapt, whose hold-out must not also choose the checkpoint it judges)
    keep: Literal["best", "last"] = "best"
    # save the whole training state after every epoch (OUT.state.*) and continue from it when run again
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    max_minutes: float | None = None
    # 'steps': one-cycle LR over epochs x steps; 'time': one cycle over max_minutes (a shared CPU's speed is
    # unknown in advance; training stops at max_minutes or after the epochs, whichever comes first)
    schedule: Literal["steps", "time"] = "steps"
    # Written into the checkpoint; the default halo of seamline segment. A depth-5 U-Net's effective receptive
    # field is far over 64 px: for the shipped models, context beyond 256 px moves the heads by ~1e-4 (beyond
    # 192 px by up to 0.01, enough to split an object now and then). Measure your own with bench/receptive_field.py.
    receptive_field_px: int = Field(default=256, ge=0)
    # Written into the checkpoint: the nominal object diameter in training pixels (the median over the training
    # images of each image's median equivalent diameter) and, where known, in µm. seamline segment rescales a
    # scene so that its objects come out this size (pipeline/stages/objectscale.py).
    object_diameter_px: float | None = Field(default=None, gt=0)
    object_diameter_um: float | None = Field(default=None, gt=0)
    postprocess: dict[str, float] = Field(
        default_factory=lambda: {"fg_threshold": 0.5, "marker_threshold": 0.5, "boundary_threshold": 0.5, "min_marker_area": 4, "min_area": 8}
    )
    # Post-processing settings tried at every validation; the best is stored with the checkpoint ({}: none).
    postprocess_grid: dict[str, list[float]] = Field(default_factory=lambda: {k: list(v) for k, v in VALIDATION_GRID.items()})

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.schedule == "time" and not self.max_minutes:
            raise ValueError("schedule: time needs max_minutes (the budget the learning-rate cycle spans)")
        return self
