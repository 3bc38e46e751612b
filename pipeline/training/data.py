"""Training data: images with instance label images, or GeoTIFFs with vector labels.

Two layouts are read:

``folders``
    ``images/<id>.<ext>`` and ``labels/<id>.tif`` (uint instance labels, 0 = background) — the layout of
    DSB2018 in ``shared/data/dsb2018``. An optional ``manifest.csv`` with columns ``id, modality`` gives
    per-modality validation figures.
``geotiff``
    GeoTIFF scenes plus a GeoPackage/GeoJSON of polygons; each polygon is rasterised on the scene grid as
    one instance (in the scene's CRS, reprojected if needed).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pipeline.errors import InputError
from pipeline.models.stain import hed_jitter
from pipeline.training.boxdata import load_box_dataset
from pipeline.training.config import AugmentConfig
from pipeline.training.consep import brightfield_input, load_consep, split_by_tile
from pipeline.training.hardneg import crop_origin
from pipeline.training.places import load_places_dataset, place_of, split_by_place
from pipeline.training.samples import (
    IMAGE_EXTS,
    Sample,
    detect,
    expand_paths,
    instance_class_map,
    local_only,
    normalised,
    read_image,
    read_vectors,
    vector_classes,
)

__all__ = ["Sample", "load_samples", "load_folder_dataset", "load_geotiff_dataset", "make_targets", "contact_weights", "split_train_val",
           "Augmenter"]

def load_folder_dataset(root: str | Path, in_channels: int = 3, limit: int | None = None) -> list[Sample]:
    """Read ``root/images`` and ``root/labels`` (matching stems) into memory, normalised per image."""
    import tifffile

    local_only(root, "root")
    root = Path(root)
    img_dir, lab_dir = root / "images", root / "labels"
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise InputError(f"training data {d}: folder not found; expected {root}/images and {root}/labels with matching names")
    modality: dict[str, str] = {}
    man = root / "manifest.csv"
    if man.is_file():
        with man.open() as fh:
            for row in csv.DictReader(fh):
                modality[row["id"]] = row.get("modality", "unknown")
    labels = {p.stem: p for p in lab_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png")}
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.stem in labels)
    if not images:
        raise InputError(f"training data {root}: no image in images/ has a label image of the same name in labels/")
    if limit:
        images = images[:limit]
    out = []
    for p in images:
        img = read_image(p)
        lab_path = labels[p.stem]
        lab = tifffile.imread(lab_path) if lab_path.suffix.lower() != ".png" else read_image(lab_path)[0]
        lab = np.asarray(lab).astype(np.int32)
        if lab.shape != img.shape[1:]:
            raise InputError(f"label image {lab_path}: shape {lab.shape} differs from image {img.shape[1:]}; labels must be on the image grid")
        norm = normalised(img, in_channels)
        out.append(Sample(p.stem, norm, lab, modality.get(p.stem, "unknown"), detected=detect(img)))
    return out


def class_head_loss(logits, targets, mask):
    """One-vs-rest BCE of the class heads (``logits`` N × K × H × W against ``targets``), averaged over the
    pixels of ``mask`` (N × H × W: where the class is known — object pixels, or box cores)."""
    import torch.nn.functional as F

    m = mask.unsqueeze(1)
    per_px = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (per_px * m).sum() / (m.sum() * logits.shape[1]).clamp(min=1)


def load_geotiff_dataset(rasters: list[str | Path], vectors: str | list[str], in_channels: int = 3,
                         classes: list[str] | None = None) -> list[Sample]:
    """Rasterise vector polygons on each GeoTIFF's grid; each polygon becomes one instance (of its ``class``
    attribute's class when ``classes`` names several)."""
    import rasterio
    from rasterio.features import rasterize

    gdf = read_vectors(vectors)
    poly_cls = vector_classes(gdf, classes, str(vectors))
    out = []
    for r in rasters:
        with rasterio.open(r) as ds:
            img = ds.read()
            g = gdf.to_crs(ds.crs) if (gdf.crs is not None and ds.crs is not None) else gdf
            kept = [i for i, geom in enumerate(g.geometry) if geom is not None and not geom.is_empty]
            shapes = [(g.geometry.iloc[i], n + 1) for n, i in enumerate(kept)]
            lab = rasterize(shapes, out_shape=(ds.height, ds.width), transform=ds.transform, fill=0, dtype="int32") if shapes else np.zeros((ds.height, ds.width), np.int32)
            nodata = ds.nodata
        norm = normalised(img, in_channels, nodata)
        out.append(Sample(Path(r).stem, norm, lab, "geotiff", instance_classes=instance_class_map(poly_cls, kept),
                          detected=detect(img)))
    return out


def load_samples(data, in_channels: int, pixel_size: float | None = None, classes: list[str] | None = None,
                 input_kind: str = "bands") -> list[Sample]:
    """The labelled images a training config's ``data:`` names (:class:`~pipeline.training.config.DataConfig`);
    ``pixel_size``: the GSD place-based GeoTIFF data is resampled to; ``classes``: the model's classes (several:
    each polygon's ``class`` attribute is learned too — GeoTIFF data, CoNSeP's cell types); ``input_kind``: the
    network input of brightfield (CoNSeP) data (:func:`pipeline.models.stain.model_input`)."""
    if data.kind == "consep":
        return load_consep(data.root, data.subset, in_channels, classes, input_kind, limit=data.limit)
    if classes and len(classes) > 1 and data.kind == "folders":
        raise InputError(f"training config: {len(classes)} classes need labels that carry a class (data.kind: geotiff "
                         f"with a 'class' attribute on the polygons, or boxes with labels); folders data has one class")
    if data.kind == "folders":
        return load_folder_dataset(data.root, in_channels, limit=data.limit)
    if data.kind == "boxes":
        return load_box_dataset(data.rasters, data.boxes, in_channels, tile=data.tile, classes=classes)
    if data.place_size:
        if pixel_size is None:
            raise InputError("training config: data.place_size needs pixel_size: [value, unit] (the GSD to resample to)")
        return load_places_dataset(data.rasters, data.vectors, pixel_size, data.place_size, in_channels, classes)
    return load_geotiff_dataset(expand_paths(data.rasters, "rasters"), data.vectors, in_channels, classes)


def split_samples(samples: list[Sample], data, val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Train/validation split: the names in ``data.val_names``, whole places (place-based data), or random
    per modality."""
    if data.val_names:
        # a name is a sample's, or (place-based data) a place's: every resolution of that place is held out
        names = set(data.val_names)
        unknown = names - {s.name for s in samples} - {place_of(s.name) for s in samples}
        if unknown:
            raise InputError(f"training config data.val_names: {sorted(unknown)} are not sample or place names; "
                             f"names look like {sorted(s.name for s in samples)[:3]}")

        def held(s: Sample) -> bool:
            return s.name in names or place_of(s.name) in names

        return [s for s in samples if not held(s)], [s for s in samples if held(s)]
    if data.kind == "consep":  # patches of one tile overlap: hold out whole tiles
        return split_by_tile(samples, val_fraction, seed)
    if data.kind == "geotiff" and data.place_size:
        return split_by_place(samples, val_fraction, seed)
    return split_train_val(samples, val_fraction, seed)


def source_of(sample: Sample) -> str:
    """The image a sample was cut from (tiles are named ``<image>@<row>_<col>``)."""
    return sample.name.split("@")[0]


def source_weights(samples: list[Sample], balance: float) -> np.ndarray:
    """Probability of drawing each sample when a source of n tiles weighs n ** (1 - balance) in all
    (0: every tile alike; 1: every source alike)."""
    from collections import Counter

    src = [source_of(s) for s in samples]
    n = Counter(src)
    w = np.array([n[x] ** (1.0 - balance) / n[x] for x in src], np.float64)
    return w / w.sum()


def split_train_val(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split stratified by modality with a fixed seed (the same split on every machine)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    by_mod: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.name):
        by_mod.setdefault(s.modality, []).append(s)
    for mod in sorted(by_mod):
        group = by_mod[mod]
        idx = rng.permutation(len(group))
        n_val = int(round(len(group) * val_fraction))
        if len(group) > 1:
            n_val = max(1, n_val)
        val += [group[i] for i in idx[:n_val]]
        train += [group[i] for i in idx[n_val:]]
    return train, val


def make_targets(labels: np.ndarray, instance_classes: np.ndarray | None = None, n_classes: int = 1) -> np.ndarray:
    """(3, H, W) float32 targets: foreground, boundary (edges and contacts), per-object normalised distance;
    with ``n_classes`` > 1, then one channel per class: 1 on the pixels of that class's objects (the class
    loss only looks at object pixels)."""
    from skimage.segmentation import find_boundaries

    fg = labels > 0
    bnd = find_boundaries(labels, mode="inner") & fg
    dist = ndi.distance_transform_edt(fg & ~bnd).astype(np.float32)
    if labels.max() > 0:
        mx = ndi.maximum(dist, labels, index=np.arange(labels.max() + 1))
        mx = np.asarray(mx, np.float32)
        mx[mx == 0] = 1.0
        dist = dist / mx[labels]
    dist[~fg] = 0.0
    heads = [fg.astype(np.float32), bnd.astype(np.float32), dist]
    if n_classes > 1:
        if instance_classes is None:
            raise ValueError("multi-class targets need each label's class (Sample.instance_classes)")
        cls = instance_classes[labels]  # -1 on background
        heads += [(cls == k).astype(np.float32) for k in range(n_classes)]
    return np.stack(heads)


def contact_weights(labels: np.ndarray, weight: float, width: int = 2) -> np.ndarray:
    """(H, W) float32 loss weights: ``1 + weight`` on pixels within ``width`` px of two different objects.

    Touching and nearly touching objects are where instance segmentation fails: on DSB2018 fluorescence most
    misses are two nuclei predicted as one. Those contacts are a tiny fraction of the pixels, so an unweighted
    loss barely sees them; weighting the band between neighbours (the idea of the U-Net paper's weight map)
    makes the heads learn to cut there. ``weight = 0`` gives uniform weights.
    """
    if weight <= 0 or labels.max() == 0:
        return np.ones(labels.shape, np.float32)
    size = 2 * width + 1
    hi = ndi.maximum_filter(labels, size=size, mode="constant", cval=0)
    big = np.iinfo(labels.dtype).max
    lo = ndi.minimum_filter(np.where(labels > 0, labels, big), size=size, mode="constant", cval=big)
    band = (lo != big) & (hi != lo)  # two different object labels within the window
    return (1.0 + weight * band).astype(np.float32)


def _resample(img: np.ndarray, lab: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample a square crop to ``out × out``: bilinear image, nearest labels (pixel centres aligned)."""
    src = lab.shape[0]
    c = (np.arange(out) + 0.5) * (src / out) - 0.5
    c = np.clip(c, 0, src - 1)
    i0 = np.floor(c).astype(np.intp)
    i1 = np.minimum(i0 + 1, src - 1)
    f = (c - i0).astype(np.float32)
    rows = img[:, i0] * (1 - f)[None, :, None] + img[:, i1] * f[None, :, None]
    img = rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i1] * f[None, None, :]
    near = np.clip(np.round(c), 0, src - 1).astype(np.intp)
    return img.astype(np.float32, copy=False), lab[np.ix_(near, near)]


def jitter_intensity(img: np.ndarray, rng: np.random.Generator, a) -> np.ndarray:
    """The intensity changes of :class:`~.config.AugmentConfig` ``a`` on one (C, H, W) crop in [0, 1]: blur,
    dimming, colour cast and saturation (RGB), gain and gamma, background offset, noise. A change whose
    probability is 0 draws no random numbers."""
    if a.blur_p and rng.random() < a.blur_p:
        sigma = float(rng.uniform(*a.blur_sigma))
        img = ndi.gaussian_filter(img, (0, sigma, sigma), mode="reflect")
    if a.dim_p and rng.random() < a.dim_p:
        img = img * float(rng.uniform(*a.dim))
    img = color_cast(img, rng, a)
    gain = rng.uniform(*a.gain)
    gamma = float(np.exp(rng.uniform(np.log(a.gamma[0]), np.log(a.gamma[1]))))
    img = np.clip(np.clip(img, 0, 1) ** gamma * gain, 0, 1)
    if a.offset_p and rng.random() < a.offset_p:
        o = float(rng.uniform(*a.offset))
        img = img * (1 - o) + o
    if rng.random() < a.noise_p:
        img = np.clip(img + rng.normal(0, rng.uniform(*a.noise_sigma), img.shape), 0, 1)
    return img


def color_cast(img: np.ndarray, rng: np.random.Generator, a) -> np.ndarray:
    """Colour cast (a factor per channel) and saturation (a blend with the grey image) on an RGB crop, with
    probability ``a.color_p``."""
    if a.color_p and img.shape[0] >= 3 and rng.random() < a.color_p:
        img = img * rng.uniform(*a.channel_gain, size=(img.shape[0], 1, 1))
        grey = img.mean(axis=0, keepdims=True)
        img = grey + (img - grey) * float(rng.uniform(*a.saturation))
    return img


class Augmenter:
    """Random crop with scale jitter, flips, 90° rotations and intensity changes (gain, gamma, noise; blur,
    background offset, dimming and colour cast/saturation when ``augment`` asks for them: :class:`~.config.AugmentConfig`).

    Returns ``(image, targets, weights)``: (C, crop, crop) image, (3, crop, crop) targets of
    :func:`make_targets` and (crop, crop) loss weights of :func:`contact_weights`. A change whose
    probability is 0 draws no random numbers, so the default recipe gives the crops it always gave.

    Brightfield samples (``Sample.raw``: RGB transmission) are cropped from ``raw``; then come the stain
    jitter (``augment.hed_p``, :func:`pipeline.models.stain.hed_jitter`) and the colour cast on the
    transmission, the network input of ``input_kind`` (:func:`pipeline.training.consep.brightfield_input`,
    what inference makes of a scene), and the other intensity changes on that input. Their labels are
    mirrored with the image where a zoomed-out crop is larger than the image (a mirrored nucleus is a
    nucleus; zeros there would teach the network to miss it).
    """

    def __init__(self, crop: int, seed: int, scale: tuple[float, float] | None = None, contact_weight: float = 0.0,
                 augment=None, n_classes: int = 1, input_kind: str = "bands", in_channels: int = 3,
                 hard_share: float = 0.0):
        self.aug = augment or AugmentConfig()
        self.input_kind, self.in_channels = input_kind, in_channels
        self.hard_share = hard_share  # share of crops centred on mined false positives (hardneg.py)
        self.n_classes = n_classes
        self.crop = crop
        self.scale = tuple(scale) if scale is not None else (0.75, 1.33)
        self.contact_weight = contact_weight
        self.rng = np.random.default_rng(seed)

    def __call__(self, s: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = self.rng
        img, lab = (s.image if s.raw is None else s.raw), s.labels
        f = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
        # Crop a region of crop/f source pixels, then resample it to crop × crop.
        src = max(8, int(round(self.crop / f)))
        h, w = lab.shape
        if h < src or w < src:
            ph, pw = max(0, src - h), max(0, src - w)
            mode = "reflect" if min(h, w) > max(ph, pw) else "constant"
            img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode=mode)
            lab = np.pad(lab, ((0, ph), (0, pw)), mode=mode if s.raw is not None else "constant")
            h, w = lab.shape
        origin = crop_origin(s, src, h, w, rng, self.hard_share)
        y, x = origin if origin is not None else (int(rng.integers(0, h - src + 1)), int(rng.integers(0, w - src + 1)))
        img = img[:, y : y + src, x : x + src]
        lab = lab[y : y + src, x : x + src]
        if src != self.crop:
            img, lab = _resample(img, lab, self.crop)
        k = int(rng.integers(0, 4))
        img, lab = np.rot90(img, k, axes=(1, 2)), np.rot90(lab, k)
        if rng.random() < 0.5:
            img, lab = img[:, :, ::-1], lab[:, ::-1]
        if s.raw is not None:
            img = self._brightfield(img)
        else:
            img = jitter_intensity(img, self.rng, self.aug)
        lab = np.ascontiguousarray(lab)
        return (np.ascontiguousarray(img, dtype=np.float32), make_targets(lab, s.instance_classes, self.n_classes),
                contact_weights(lab, self.contact_weight))

    def _brightfield(self, rgb: np.ndarray) -> np.ndarray:
        """Stain jitter and colour cast on a transmission crop, then its network input, then the remaining
        intensity changes (blur, gain, gamma, noise…) on that input."""
        a = self.aug
        if a.hed_p and self.rng.random() < a.hed_p:
            rgb = hed_jitter(np.ascontiguousarray(rgb), self.rng, a.hed_alpha, a.hed_beta)
        rgb = np.clip(color_cast(rgb, self.rng, a), 0, 1).astype(np.float32, copy=False)
        x = brightfield_input(rgb, self.input_kind, self.in_channels)
        return jitter_intensity(x, self.rng, a.model_copy(update={"color_p": 0.0}))
