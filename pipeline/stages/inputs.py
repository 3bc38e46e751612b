"""Stage 1 (plan), input side: what the pipeline reads from an input — backend, channels, pyramid level, resampling,
and the low-resolution overview used for stain detection and tissue detection — all before any full-resolution read.

:func:`plan_input` opens the source (:func:`pipeline.io.sources.open_source`), resolves ``channels:`` (names
or 1-based indices), detects a single fluorescence stain rendered as one colour of an RGB image (R = G = 0:
the model must get that one grey channel, not a near-black RGB), applies the resolution rule
(:mod:`pipeline.stages.resolution`) and returns the :class:`SceneInfo` of the working image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.io.scene import SceneInfo
from pipeline.io.sources import ImageSource, open_source, resolve_channels
from pipeline.io.units import to_um
from pipeline.stages.resolution import Resolution, choose_resolution, model_pixel_size, working_shape

__all__ = ["InputPlan", "plan_input", "overview", "read_overview", "model_channels", "single_stain_channel", "OVERVIEW_PX"]

OVERVIEW_PX = 2048  # longest side of the overview read for stain and tissue detection
EMPTY_RATIO = 0.1  # a colour is "empty" when its 99.9th percentile is below this share of the brightest's


@dataclass
class InputPlan:
    info: SceneInfo
    resolution: Resolution
    source: dict[str, Any]
    overview: np.ndarray | None = None  # (channels, h, w) of the selected channels, or None
    overview_downsample: float = 1.0  # level-0 pixels per overview pixel
    warnings: list[str] = field(default_factory=list)
    stain: dict[str, Any] | None = None
    tissue: dict[str, Any] = field(default_factory=lambda: {"run": False, "why": "off"})  # tissue detection: run? why


def overview(src: ImageSource, max_px: int = OVERVIEW_PX) -> tuple[np.ndarray, np.ndarray | None, float]:
    """The whole image at low resolution: the finest level whose longest side is ≤ ``max_px`` (the coarsest
    level when none is), strided down further if it is still larger. Returns (data, valid mask or None,
    level-0 pixels per overview pixel). Reads one low-resolution level only."""
    k = len(src.levels) - 1
    for i, lv in enumerate(src.levels):
        if max(lv.height, lv.width) <= max_px:
            k = i
            break
    lv = src.levels[k]
    step = max(1, -(-max(lv.height, lv.width) // max_px))
    rows = []
    masks = []
    strip = max(step, (4096 // step) * step)
    for r in range(0, lv.height, strip):  # in strips: a level without a pyramid is never held whole
        h = min(strip, lv.height - r)
        d, m = src.read_with_mask(k, r, 0, h, lv.width)
        rows.append(d[:, ::step, ::step])
        v = src.valid_pixels(d, m)
        masks.append(None if v is None else v[::step, ::step])
    data = np.concatenate(rows, axis=1)
    mask = None if masks[0] is None else np.concatenate(masks, axis=0)
    return data, mask, lv.downsample * step


def read_overview(src: ImageSource, url: str) -> tuple[np.ndarray, np.ndarray | None, float]:
    """:func:`overview`, with a broken file reported in one line naming ``url``."""
    try:
        return overview(src)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - codecs (zlib, JPEG, LZW) raise their own types for broken blocks
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise InputError(f"input {url}: reading its low-resolution overview failed ({first}); the file looks "
                         "truncated or corrupt — re-copy or re-export it") from None


def model_channels(src: ImageSource, cfg) -> tuple[list[int], list[int] | None]:
    """The channels a model gets before any stain or nuclear-channel choice: ``channels:``/``bands:`` when set
    (also returned second, else None), else all but an unnamed alpha band."""
    key = "bands" if cfg.bands is not None else "channels"
    chosen = resolve_channels(src, cfg.bands if cfg.bands is not None else cfg.channels, key)
    channels = chosen if chosen is not None else list(range(src.count))
    if chosen is None and src.count == 4 and src.channel_names[3].lower() == "alpha":
        channels = channels[:3]  # an RGBA image without an alpha colour interpretation (tifffile "S" axis)
    return channels, chosen


def single_stain_channel(data: np.ndarray, mask: np.ndarray | None = None) -> int | None:
    """The one colour channel that holds signal when the others are empty (R = G = 0 of a DAPI render),
    else None. Judged on the overview: each other channel's 99.9th percentile is below EMPTY_RATIO of the
    brightest channel's."""
    if data.shape[0] < 2:
        return None
    v = data.reshape(data.shape[0], -1) if mask is None else data[:, mask]
    if v.shape[1] == 0:
        return None
    hi = np.percentile(v.astype(np.float64), 99.9, axis=1)
    top = int(np.argmax(hi))
    if hi[top] <= 0:
        return None
    others = np.delete(hi, top)
    return top if np.all(others <= EMPTY_RATIO * hi[top]) else None


def plan_input(url: str, cfg, md: dict | None = None, model_name: str = "the model",
               extra_scale: float = 1.0) -> InputPlan:
    """Describe the working image for ``url`` under config ``cfg`` (a SegmentConfig) and model metadata ``md``.

    ``extra_scale`` is the object-size hook of :func:`pipeline.stages.resolution.choose_resolution`."""
    src = open_source(url, cfg.reader, cfg.series)
    try:
        return _plan(src, url, cfg, md, model_name, extra_scale)
    finally:
        src.close()


#: Channel names of nuclear stains (case-insensitive substrings): what a nuclei model reads from a multiplexed image.
NUCLEAR_STAINS = ("dapi", "hoechst", "draq5", "draq7", "dna", "nucle", "syto", "h33342", "sytox", "propidium")


def nuclear_channel(names: list[str]) -> int | None:
    """The 0-based channel of a nuclear stain in a multi-channel image, by name (the first one); None for one
    channel, RGB renders, or names that say nothing."""
    if len(names) < 2 or [n.lower() for n in names[:3]] == ["red", "green", "blue"]:
        return None
    return next((i for i, n in enumerate(names) if any(s in str(n).lower() for s in NUCLEAR_STAINS)), None)


def tissue_decision(enabled: bool | str, src: ImageSource) -> dict[str, Any]:
    """Whether tissue detection runs, and why (the summary says both). ``auto`` runs it on slides — a
    whole-slide format (OpenSlide), OME-TIFF or OME-Zarr, or any image whose pixel size is in µm — where the
    glass half of a slide would otherwise go through the model; never on a georeferenced scene."""
    if enabled is True:
        return {"run": True, "why": "tissue.enabled: true"}
    if enabled is False:
        return {"run": False, "why": "tissue.enabled: false"}
    if src.crs_wkt is not None:
        return {"run": False, "why": "auto: a georeferenced scene"}
    if src.reader in ("openslide", "tifffile", "zarr"):
        return {"run": True, "why": f"auto: a slide ({src.format})"}
    if src.pixel_size_um is not None:
        return {"run": True, "why": "auto: a microscopy image (pixel size in µm)"}
    return {"run": False, "why": "auto: no pixel size, not a slide format"}


def _nuclei_model(md: dict | None) -> bool:
    return bool(md) and "nucleus" in (md.get("classes") or [])


def _plan(src: ImageSource, url: str, cfg, md, model_name: str, extra_scale: float) -> InputPlan:
    warnings: list[str] = []
    channels, chosen = model_channels(src, cfg)
    nuclear = nuclear_channel(src.channel_names) if chosen is None and _nuclei_model(md) else None
    if nuclear is not None:  # a multiplexed fluorescence image: the nuclei model gets the nuclear stain
        channels = [nuclear]
        warnings.append(f"channel {nuclear + 1} ({src.channel_names[nuclear]}) taken as the nuclear stain for "
                        f"{model_name}; set channels: to choose another")
    tissue = tissue_decision(cfg.tissue.enabled, src)
    need_overview = tissue["run"] or (chosen is None and cfg.single_stain != "off" and len(channels) == 3)
    ov = ov_mask = None
    ov_down = 1.0
    stain = None
    if need_overview:
        ov, ov_mask, ov_down = read_overview(src, url)
        ov = ov[channels]
        if chosen is None and len(channels) == 3 and cfg.single_stain != "off":
            c = single_stain_channel(ov, ov_mask)
            if c is None and cfg.single_stain == "on":
                hi = np.percentile(ov.reshape(3, -1), 99.9, axis=1)
                c = int(np.argmax(hi))
            if c is not None:
                stain = {"channel": src.channel_names[channels[c]], "index": channels[c] + 1,
                         "detected": cfg.single_stain == "auto"}
                warnings.append(f"single stain: only channel {channels[c] + 1} ({src.channel_names[channels[c]]}) "
                                "holds signal; the model gets it as one grey channel (single_stain: off to keep all)")
                channels = [channels[c]]
                ov = ov[c : c + 1]
    ps = src.pixel_size
    unit = src.pixel_unit
    if cfg.pixel_size_um and src.crs_wkt is None:
        ps, unit = tuple(cfg.pixel_size_um), "um"
    model_px = model_pixel_size(md, cfg.resolution.pixel_size)
    res = choose_resolution(src.levels, ps, unit, model_px,
                            extra_scale=extra_scale, level=cfg.resolution.level, model_name=model_name)
    # A model that states its objects' size instead (object_diameter_px, the nuclei model) is scaled by the
    # object-diameter route, whose choice the summary's object_scale gives: no warning for it here.
    if md is not None and model_px is None and cfg.resolution.level is None and "object_diameter_px" not in md:
        warnings.append(f"{model_name} does not say which pixel size it was trained at (no pixel_size in its "
                        "metadata): ran at the image's native resolution; set resolution.pixel_size to rescale")
    warnings.extend(res.warnings)
    lv = src.levels[res.level]
    h, w = working_shape(lv, res.resample)
    s = res.scale
    a, b, c0, d, e, f0 = src.transform
    ps_um = None
    if src.crs_wkt is None and ps is not None and unit == "um":
        ps_um = (ps[0] * s, ps[1] * s)
    elif src.crs_wkt is None and ps is not None:
        x, y = to_um(ps[0], unit), to_um(ps[1], unit)
        ps_um = (x * s, y * s) if x and y else None
    info = SceneInfo(
        url, w, h, len(channels), src.dtype, src.crs_wkt, (a * s, b * s, c0, d * s, e * s, f0), src.nodata, ps_um,
        src.format, src.reader, src.series, res.level, res.resample, s, (src.height, src.width),
        tuple((lv_.height, lv_.width, lv_.downsample) for lv_ in src.levels), tuple(channels),
        tuple(src.channel_names[i] for i in channels), src.may_have_invalid,
        (ps[0] * s, ps[1] * s) if src.crs_wkt is not None and ps is not None and unit == "m" else None)
    return InputPlan(info, res, src.describe(), ov, ov_down, warnings, stain, tissue)
