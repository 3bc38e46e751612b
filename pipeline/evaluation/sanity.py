"""Plausibility figures of a segmentation without ground truth, from the image itself.

For a real slide with no labels (the DAPI test slide), three things any reader of the result would check:

* **background share**: objects whose mean signal lies below the slide's own Otsu threshold sit on empty
  background (noise specks, autofluorescence), not on nuclei;
* **density**: objects per mm² of tissue, the tissue being the slide's foreground closed over gaps of a
  few nuclei (a plausible nuclear density is a few thousand per mm²);
* **size**: the median object area in µm² (mammalian nuclei: roughly 20–150 µm²).

All from level-0 pixels and polygons in level-0 pixel coordinates as a run of an image without georeferencing
writes them (x = column, y = -row: :data:`~pipeline.io.scene.PIXEL_TRANSFORM`).
"""

from __future__ import annotations

import numpy as np
from affine import Affine

from pipeline.io.scene import PIXEL_TRANSFORM

__all__ = ["object_means", "tissue_mask", "slide_figures"]


def object_means(signal: np.ndarray, geoms) -> np.ndarray:
    """Mean of ``signal`` (H, W) inside each polygon (level-0 pixel coordinates), in order."""
    from rasterio.features import rasterize

    if len(geoms) == 0:
        return np.zeros(0)
    lab = rasterize(((g, i + 1) for i, g in enumerate(geoms)), out_shape=signal.shape, fill=0, dtype="int32",
                    transform=Affine(*PIXEL_TRANSFORM))
    n = len(geoms) + 1
    sums = np.bincount(lab.ravel(), weights=signal.ravel().astype(np.float64), minlength=n)
    counts = np.bincount(lab.ravel(), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts)[1:]


def tissue_mask(signal: np.ndarray, threshold: float, pixel_size_um: float, gap_um: float = 20.0) -> np.ndarray:
    """Foreground (``signal > threshold``) closed over gaps of ``gap_um`` and with holes filled: the area
    the nuclei are in, including the cytoplasm and stroma between them. Computed at a coarse grid (every
    ``gap_um / 4`` µm) to stay cheap on a whole slide."""
    from scipy import ndimage as ndi

    step = max(1, int(gap_um / 4 / pixel_size_um))
    h, w = signal.shape
    hc, wc = -(-h // step), -(-w // step)
    pad = np.zeros((hc * step, wc * step), bool)
    pad[:h, :w] = signal > threshold
    coarse = pad.reshape(hc, step, wc, step).mean(axis=(1, 3)) > 0.05
    r = max(1, int(round(gap_um / (step * pixel_size_um) / 2)))
    disk = np.hypot(*np.mgrid[-r : r + 1, -r : r + 1]) <= r
    closed = ndi.binary_fill_holes(ndi.binary_closing(np.pad(coarse, r), disk)[r:-r, r:-r])
    return np.repeat(np.repeat(closed, step, 0), step, 1)[:h, :w]


def slide_figures(signal: np.ndarray, geoms, areas_um2: np.ndarray, pixel_size_um: float) -> dict:
    """Background share, density per mm² of tissue and area figures of one slide's objects."""
    from skimage.filters import threshold_otsu

    thr = float(threshold_otsu(signal[::4, ::4]))
    means = object_means(signal, geoms)
    tissue = tissue_mask(signal, thr, pixel_size_um)
    tissue_mm2 = float(tissue.sum()) * pixel_size_um**2 / 1e6
    n = len(geoms)
    return {
        "objects": n,
        "otsu_threshold": thr,
        "background_share": float(np.mean(means < thr)) if n else 0.0,
        "tissue_mm2": round(tissue_mm2, 4),
        "objects_per_mm2_tissue": n / tissue_mm2 if tissue_mm2 > 0 else float("nan"),
        "median_area_um2": float(np.median(areas_um2)) if n else float("nan"),
        "area_p10_p90_um2": [float(x) for x in np.percentile(areas_um2, [10, 90])] if n else None,
    }
