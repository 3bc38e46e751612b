"""A model that predicts several classes (issue #9 item 4): trained from polygons with a ``class`` attribute, it
names each object it finds; the class goes into the GeoParquet/GPKG ``class`` column, the QuPath GeoJSON, and
counts and areas per class into the JSON summary; ``seamline evaluate`` reports per class. An object joined
across tiles gets one class (the pieces' class probabilities add up), and tiled equals untiled.

The data are generated: red and blue discs on a dark ground, the colour being the class — easy enough that a
few CPU seconds of fine-tuning from the shipped weights learn it, which is what lets this run in the suite.
"""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from pipeline.config import SegmentConfig
from pipeline.runner import segment_scene

pytestmark = pytest.mark.slow  # training

CLASSES = ["red_thing", "blue_thing"]
COLOURS = {"red_thing": (210, 40, 30), "blue_thing": (30, 50, 210)}


def _scene(path, seed: int, size: int = 384, crs: str = "EPSG:32636"):
    """An RGB GeoTIFF of discs (radius 7-10 px) on a noisy dark ground; returns their polygons and classes."""
    rng = np.random.default_rng(seed)
    img = rng.normal(25, 6, (3, size, size))
    yy, xx = np.mgrid[:size, :size]
    tf = from_origin(500000 + seed * 1000, 40000 + size * 0.5, 0.5, 0.5)  # each scene its own place
    rows = []
    for cy in range(20, size - 16, 30):
        for cx in range(20, size - 16, 30):
            if rng.random() < 0.2:
                continue
            cy_, cx_ = cy + rng.uniform(-4, 4), cx + rng.uniform(-4, 4)
            r = rng.uniform(7, 10)
            cls = CLASSES[int(rng.random() < 0.5)]
            disc = (yy - cy_) ** 2 + (xx - cx_) ** 2 <= r * r
            for b in range(3):
                img[b][disc] = COLOURS[cls][b] + rng.normal(0, 6, disc.sum())
            x, y = tf * (cx_, cy_)
            rows.append({"class": cls, "geometry": shapely.Point(x, y).buffer(r * 0.5, quad_segs=16)})
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=crs,
                       transform=tf, tiled=True, blockxsize=128, blockysize=128) as ds:
        ds.write(np.clip(img, 0, 255).astype(np.uint8))
    return gpd.GeoDataFrame(rows, crs=crs)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from pipeline.training.config import TrainConfig
    from pipeline.training.train import train

    d = tmp_path_factory.mktemp("multiclass")
    frames = [_scene(d / f"s{i}.tif", seed=i) for i in range(3)]
    gpd.pd.concat(frames).to_file(d / "labels.gpkg", layer="objects")
    cfg = TrainConfig.model_validate({
        "data": {"kind": "geotiff", "rasters": [str(d / f"s{i}.tif") for i in range(3)], "vectors": str(d / "labels.gpkg"),
                 "val_names": ["s2"]},
        "init_from": "default", "out": str(d / "m"), "classes": CLASSES, "epochs": 12, "batch_size": 4, "crop": 128,
        "crops_per_image": 16, "lr": 5e-3, "threads": 2, "val_every": 2, "seed": 0,
    })
    summary = train(cfg)
    return d, summary


def test_a_multi_class_model_names_what_it_finds(model, dask_client_session, tmp_path):
    d, summary = model
    md = json.loads((d / "m" / "m.json").read_text())
    assert md["classes"] == CLASSES and md["heads"] == ["foreground", "boundary", "distance", "class:red_thing", "class:blue_thing"]
    assert summary["history"][-1]["val"]["all"]["class_accuracy"] >= 0.9  # validation objects named right

    truth = _scene(tmp_path / "test.tif", seed=7)
    runs = {}
    for tile in (1024, 320):  # 320: a multiple of 32 above the 256-px halo, so discs are cut by seams
        cfg = SegmentConfig(model=str(d / "m"), tile=tile, batch_size=2, label_image=False, report=False)
        runs[tile] = segment_scene(str(tmp_path / "test.tif"), tmp_path / f"out{tile}", cfg, client=dask_client_session)
    whole, tiled = runs[1024], runs[320]
    assert tiled["tiling"]["tiles"] == 4 and tiled["joined_objects"] > 0
    g = gpd.read_parquet(whole["outputs"]["parquet"])
    assert set(g["class"]) <= set(CLASSES) and len(set(g["class"])) == 2
    # Each truth disc's best-overlapping object carries its class.
    pairs = gpd.sjoin(truth, g[["class", "geometry"]].rename(columns={"class": "pred"}), predicate="intersects")
    named = pairs.groupby(level=0).first()
    assert len(named) >= 0.9 * len(truth) and (named["class"] == named["pred"]).mean() >= 0.9
    # Tiled = untiled, classes included (joined objects sum their pieces' class probabilities).
    t = gpd.read_parquet(tiled["outputs"]["parquet"])
    key = lambda df: sorted(zip(df["class"], df.area_px))  # noqa: E731
    assert key(t) == key(g)
    # Per class in the summary, the GPKG and the QuPath GeoJSON.
    counts = g["class"].value_counts().to_dict()
    assert whole["counts_per_class"] == counts and set(whole["area_per_class"]) == set(counts)
    assert whole["model"]["classes"] == CLASSES
    assert gpd.read_file(whole["outputs"]["gpkg"], layer="objects")["class"].value_counts().to_dict() == counts
    gj = json.loads((tmp_path / "out1024" / "test.qupath.geojson").read_text())
    assert {f["properties"]["classification"]["name"] for f in gj["features"]} == set(counts)

    # seamline evaluate per class, against the truth polygons.
    from pipeline.evaluation.evaluate import evaluate_files

    truth.to_file(tmp_path / "truth.gpkg", layer="truth")
    rep = evaluate_files(whole["outputs"]["parquet"], tmp_path / "truth.gpkg")
    assert set(rep["per_class"]) == set(CLASSES)
    assert all(v["f1"] > 0.8 for v in rep["per_class"].values()), rep["per_class"]


def test_multi_class_labels_need_the_class_attribute(tmp_path):
    from pipeline.errors import InputError
    from pipeline.training.data import load_geotiff_dataset

    frame = _scene(tmp_path / "a.tif", seed=1)
    frame.drop(columns="class").to_file(tmp_path / "nocls.gpkg")
    with pytest.raises(InputError, match=r"nocls.gpkg: 2 classes .* need a 'class' attribute"):
        load_geotiff_dataset([tmp_path / "a.tif"], tmp_path / "nocls.gpkg", 3, CLASSES)
    frame.assign(**{"class": "green_thing"}).to_file(tmp_path / "other.gpkg")
    with pytest.raises(InputError, match=r"classes \['green_thing'\] are not in the config's classes"):
        load_geotiff_dataset([tmp_path / "a.tif"], tmp_path / "other.gpkg", 3, CLASSES)
    frame.to_file(tmp_path / "ok.gpkg")
    (s,) = load_geotiff_dataset([tmp_path / "a.tif"], tmp_path / "ok.gpkg", 3, CLASSES)
    assert s.instance_classes[0] == -1 and set(s.instance_classes[1:]) == {0, 1}
    present = np.unique(s.labels[s.labels > 0])
    assert set(s.instance_classes[present]) == {0, 1}



def test_box_labels_with_classes_train_the_class_heads(tmp_path):
    """Boxes with labels (DeepForest-style CSV, as SOAP_061's Alive/Dead crowns): the class heads learn from the
    box cores, and validation counts each box's class by its core."""
    import csv

    from pipeline.training.config import TrainConfig
    from pipeline.training.train import train

    rows = []
    for i in range(3):
        frame = _scene(tmp_path / f"b{i}.tif", seed=10 + i)
        with rasterio.open(tmp_path / f"b{i}.tif") as ds:
            inv = ~ds.transform
        for cls, geom in zip(frame["class"], frame.geometry):
            x0, y0, x1, y1 = geom.bounds
            (c0, r1), (c1, r0) = inv * (x0, y0), inv * (x1, y1)
            rows.append([f"b{i}.tif", round(c0), round(r0), round(c1), round(r1), cls])
    with open(tmp_path / "boxes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "xmin", "ymin", "xmax", "ymax", "label"])
        w.writerows(rows)
    cfg = TrainConfig.model_validate({
        "data": {"kind": "boxes", "rasters": [str(tmp_path / f"b{i}.tif") for i in range(3)],
                 "boxes": [str(tmp_path / "boxes.csv")], "val_names": ["b2"]},
        "init_from": "default", "out": str(tmp_path / "m"), "classes": CLASSES, "epochs": 12, "batch_size": 4,
        "crop": 128, "crops_per_image": 16, "lr": 5e-3, "threads": 2, "val_every": 4, "seed": 0,
    })
    summary = train(cfg)
    accs = [h["val"]["all"]["class_accuracy"] for h in summary["history"] if h["val"]]
    assert accs[-1] >= 0.9, accs
    md = json.loads((tmp_path / "m" / "m.json").read_text())
    assert md["heads"][3:] == ["class:red_thing", "class:blue_thing"]


def test_class_accuracy_of_an_image_whose_labels_do_not_end_the_label_file(tmp_path):
    """Labels number the label file's polygons across all images: the first image's class map is longer than its
    own largest label. Class heads equal to the truth score 1.0, their swap 0.0."""
    from pipeline.training.data import load_geotiff_dataset
    from pipeline.training.train import class_accuracy

    frames = [_scene(tmp_path / f"s{i}.tif", seed=i) for i in range(2)]
    gpd.pd.concat(frames).to_file(tmp_path / "labels.gpkg", layer="objects")
    first, _ = load_geotiff_dataset([tmp_path / "s0.tif", tmp_path / "s1.tif"], tmp_path / "labels.gpkg", 3, CLASSES)
    assert first.labels.max() + 1 < len(first.instance_classes)
    cls = first.instance_classes[first.labels]
    truth = np.stack([np.zeros_like(cls, np.float32)] * 3 + [(cls == k).astype(np.float32) for k in range(2)])
    assert class_accuracy([truth], [first]) == 1.0
    assert class_accuracy([truth[[0, 1, 2, 4, 3]]], [first]) == 0.0
