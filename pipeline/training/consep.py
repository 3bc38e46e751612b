"""CoNSeP (Graham et al. 2019, HoVer-Net; Apache-2.0): H&E colorectal patches with nuclei and their cell types.

Layout (``shared/data/he_consep``): ``images/<subset>/<subset>_<tile>_<n>.jpg`` (256² RGB, 40x),
``labels/<subset>/….tif`` (uint16 instance labels, ids unique over the original 1000² tile) and
``types/<subset>/….mat`` (``inst_type``: the CoNSeP type of each label, in increasing label order).

Patches of one tile can overlap and share nuclei, so a validation split must hold out **whole tiles**
(:func:`split_by_tile`), never patches. Cell types are merged into the four groups HoVer-Net reports on
CoNSeP (:data:`TYPE_GROUPS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import InputError
from pipeline.models.normalize import apply_normalization, percentiles, to_model_channels
from pipeline.models.stain import model_input
from pipeline.training.samples import Sample

__all__ = ["TYPE_GROUPS", "GROUPED_TYPES", "type_table", "GROUP_NAMES", "load_consep", "split_by_tile", "tile_of", "brightfield_input", "mosaic"]

#: CoNSeP's types (1 other, 2 inflammatory, 3 healthy epithelial, 4 dysplastic/malignant epithelial,
#: 5 fibroblast, 6 muscle, 7 endothelial) in HoVer-Net's four groups.
TYPE_GROUPS = {1: "other", 2: "inflammatory", 3: "epithelial", 4: "epithelial", 5: "spindle-shaped",
               6: "spindle-shaped", 7: "spindle-shaped"}
GROUP_NAMES = ["inflammatory", "epithelial", "spindle-shaped", "other"]
#: The same four groups as numbered in HoVer-Net's processed CoNSeP (its ``type_info``), which is what
#: ``shared/data/he_consep`` holds (types 1–4 only: 1,090 / 6,386 / 10,453 / 10,617 nuclei over both subsets).
#: Read with :data:`TYPE_GROUPS`, its spindle-shaped nuclei (4) became epithelial: the first class-head run
#: learned "epithelial" for everything (docs/MODEL.md).
GROUPED_TYPES = {1: "other", 2: "inflammatory", 3: "epithelial", 4: "spindle-shaped"}


def tile_of(name: str) -> str:
    """The original tile of a patch: ``train_10_003`` → ``train_10``."""
    return name.rsplit("_", 1)[0]


def brightfield_input(raw: np.ndarray, kind: str, in_channels: int) -> np.ndarray:
    """The network input of one brightfield RGB image ``raw`` (3, H, W) as transmission in 0..1, as the
    pipeline makes it for a scene: ``bands`` percentile-normalised over the image (the pipeline: over the
    scene), the other kinds with the fixed normalisation they name; then :func:`~pipeline.models.stain.model_input`."""
    if kind == "bands":
        v = raw * np.float32(255.0)
        norm = apply_normalization(v, percentiles(v))
    else:
        norm = raw
    return to_model_channels(model_input(norm, kind), in_channels)


def _inst_types(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    return np.asarray(loadmat(path)["inst_type"]).ravel().astype(int)


def type_table(typ_dir: Path) -> dict[int, str]:
    """Which numbering the types of ``typ_dir`` use: CoNSeP's seven (some type above 4 in the folder) →
    :data:`TYPE_GROUPS`, else HoVer-Net's four groups → :data:`GROUPED_TYPES`."""
    top = max((int(_inst_types(p).max(initial=0)) for p in sorted(typ_dir.glob("*.mat"))), default=0)
    return TYPE_GROUPS if top > 4 else GROUPED_TYPES


def _types(path: Path, labels: np.ndarray, classes: list[str], table: dict[int, str]) -> np.ndarray:
    """Label value → class index (``-1`` on background and on types outside ``classes``)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    types = _inst_types(path)
    if types.size != ids.size:
        raise InputError(f"CoNSeP types {path}: {types.size} types for {ids.size} labels; expected one per label")
    index = {c: i for i, c in enumerate(classes)}
    out = np.full(int(labels.max()) + 1, -1, np.int64)
    for i, t in zip(ids, types):
        out[i] = index.get(table.get(int(t), ""), -1)
    return out


def load_consep(root: str | Path, subset: str = "train", in_channels: int = 3, classes: list[str] | None = None,
                kind: str = "bands", limit: int | None = None) -> list[Sample]:
    """CoNSeP patches of ``subset`` as samples: ``raw`` the RGB transmission (for stain jitter), ``image`` the
    network input of ``kind``; with several ``classes`` (the names of :data:`GROUP_NAMES`), each label's
    class from the types."""
    import tifffile
    from PIL import Image

    root = Path(root)
    img_dir, lab_dir, typ_dir = root / "images" / subset, root / "labels" / subset, root / "types" / subset
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise InputError(f"CoNSeP data {root}: {img_dir} or {lab_dir} not found; expected images/{subset}/ and labels/{subset}/")
    multi = classes is not None and len(classes) > 1
    if multi:
        unknown = sorted(set(classes) - set(GROUP_NAMES))
        if unknown:
            raise InputError(f"training config classes {unknown}: CoNSeP's cell-type groups are {GROUP_NAMES}")
    table = type_table(typ_dir) if multi else {}
    paths = sorted(img_dir.glob("*.jpg")) + sorted(img_dir.glob("*.png"))
    if limit:
        paths = paths[:limit]
    out = []
    for p in paths:
        lab_path = lab_dir / f"{p.stem}.tif"
        if not lab_path.is_file():
            raise InputError(f"CoNSeP data: {lab_path} not found for image {p.name}")
        raw = np.moveaxis(np.asarray(Image.open(p).convert("RGB")), -1, 0).astype(np.float32) / np.float32(255.0)
        lab = np.asarray(tifffile.imread(lab_path)).astype(np.int32)
        cls = _types(typ_dir / f"{p.stem}.mat", lab, classes, table) if multi else None
        out.append(Sample(p.stem, brightfield_input(raw, kind, in_channels), lab, "he", instance_classes=cls, raw=raw))
    if not out:
        raise InputError(f"CoNSeP data {img_dir}: no .jpg or .png images")
    return out


def split_by_tile(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``val_fraction`` of the tiles (at least one), whole: patches of a tile overlap."""
    tiles = sorted({tile_of(s.name) for s in samples})
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(len(tiles) * val_fraction))) if val_fraction > 0 and len(tiles) > 1 else 0
    held = {tiles[i] for i in rng.permutation(len(tiles))[:n_val]}
    return [s for s in samples if tile_of(s.name) not in held], [s for s in samples if tile_of(s.name) in held]


def mosaic(samples: list[Sample], cols: int = 16, gap: int = 32, glass: int = 244
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patches laid out as one slide, ``gap`` px of glass (``glass``: CoNSeP's is about 243) between them, so
    that no object touches two patches: ``(rgb uint8 (3, H, W), labels (H, W) int32 numbered 1..N over all
    patches, classes (N + 1,) int64: each label's class index, -1 at 0 and where unknown)``. Scoring the
    slide counts what scoring the patches one by one counts, and it runs as a whole tiled scene."""
    size = max(s.labels.shape[0] for s in samples) + gap
    rows = -(-len(samples) // cols)
    rgb = np.full((3, rows * size + gap, cols * size + gap), glass, np.uint8)
    labels = np.zeros(rgb.shape[1:], np.int32)
    classes = [np.array([-1], np.int64)]
    n = 0
    for i, s in enumerate(samples):
        r, c = divmod(i, cols)
        y, x = gap + r * size, gap + c * size
        h, w = s.labels.shape
        rgb[:, y: y + h, x: x + w] = np.round(s.raw * 255).astype(np.uint8)
        ids = np.unique(s.labels)[1:]
        relabel = np.zeros(int(s.labels.max()) + 1, np.int32)
        relabel[ids] = np.arange(n + 1, n + 1 + ids.size)
        labels[y: y + h, x: x + w] = relabel[s.labels]
        classes.append(s.instance_classes[ids] if s.instance_classes is not None else np.full(ids.size, -1, np.int64))
        n += ids.size
    return rgb, labels, np.concatenate(classes)
