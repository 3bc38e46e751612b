"""Box labels: reading VOC XML / DeepForest CSV / vector rectangles, box-aware augmentation, box-supervised
training, box-level metrics (NEON convention: one-to-one at box IoU >= 0.4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import deepforest_crowns, shared

from pipeline.errors import InputError
from pipeline.evaluation.boxes import box_counts, box_iou, box_scores, boxes_of_labels
from pipeline.evaluation.boxfiles import read_box_file
from pipeline.training.boxdata import load_box_dataset
from pipeline.training.boxloss import BoxAugmenter, box_losses, ellipse_labels
from pipeline.training.samples import Sample


def test_csv_columns_are_read_by_name_not_position():
    """The SJER truth CSV orders its columns xmin, xmax, ymin, ymax; OSBS_029.csv xmin, ymin, xmax, ymax."""
    sjer = read_box_file(shared("aerial", "deepforest", "2018_SJER_3_252000_4107000_image_477_truth.csv"))
    rows = sjer["2018_SJER_3_252000_4107000_image_477.tif"]
    assert len(rows) == 7
    assert rows[0][:4] == (1.0, 103.0, 82.0, 235.0)  # file row: xmin 1, xmax 82, ymin 103, ymax 235
    assert all(r[2] > r[0] and r[3] > r[1] for r in rows)
    osbs_csv = read_box_file(shared("aerial", "deepforest", "OSBS_029.csv"))["OSBS_029.tif"]
    osbs_xml = read_box_file(shared("aerial", "neon_trees", "OSBS_029.xml"))["OSBS_029.tif"]
    assert sorted(r[:4] for r in osbs_csv) == sorted(r[:4] for r in osbs_xml)  # the same 61 boxes, two formats


def test_voc_classes_and_bad_files(tmp_path):
    soap = read_box_file(shared("aerial", "neon_trees", "SOAP_061.xml"))["SOAP_061.png"]
    names = [r[4] for r in soap]
    assert names.count("Alive") == 9 and names.count("Dead") == 28
    bad = tmp_path / "b.csv"
    bad.write_text("image_path,x,y\na.png,1,2\n")
    with pytest.raises(InputError, match="columns .*xmin"):
        read_box_file(bad)


def test_vector_rectangles_on_a_georeferenced_raster(tmp_path):
    tif, gdf = deepforest_crowns()
    vec = tmp_path / "crowns.gpkg"
    gdf.to_crs("EPSG:4326").to_file(vec)  # another CRS: reprojected onto the raster
    (s,) = load_box_dataset([str(tif)], [str(vec)])
    ref = np.array(sorted(r[:4] for r in read_box_file(shared("aerial", "deepforest", "OSBS_029.csv"))["OSBS_029.tif"]))
    got = np.array(sorted(map(tuple, s.boxes)))
    assert got.shape == (61, 4)
    assert np.abs(np.clip(ref, 0, 400) - got).max() < 0.6  # pixel boxes back, through a round trip via lon/lat


def test_tiling_keeps_boxes_cut_by_the_edge_but_does_not_count_them(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "im.png")
    (tmp_path / "b.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\n"
                                    "im.png,10,10,30,30,Tree\nim.png,90,10,130,30,Tree\nim.png,60,50,110,70,Tree\n")
    left, right = load_box_dataset([str(tmp_path / "im.png")], [str(tmp_path / "b.csv")], tile=100)
    assert left.name == "im@0_0" and right.name == "im@0_100"
    assert len(left.boxes) == 3 and left.box_counted.tolist() == [True, False, True]  # 90-130: 25 % inside
    assert right.boxes.tolist() == [[0, 10, 30, 30], [0, 50, 10, 70]] and right.box_counted.tolist() == [True, False]
    with pytest.raises(InputError, match="no box"):
        load_box_dataset([str(tmp_path / "im.png")], [str(shared("aerial", "neon_trees", "SOAP_061.xml"))])


def test_box_augmentation_moves_boxes_with_the_image():
    rng = np.random.default_rng(0)
    boxes = np.array([[10, 20, 60, 50], [100, 30, 140, 110], [70, 120, 150, 150]], np.float32)
    img = np.zeros((3, 160, 170), np.float32)
    for x0, y0, x1, y1 in boxes.astype(int):
        img[:, y0:y1, x0:x1] = 1.0
    s = Sample("x", img, np.zeros((160, 170), np.int32), boxes=boxes)
    aug = BoxAugmenter(96, seed=3)
    for _ in range(20):
        x, t, b = aug(s)
        inside = np.zeros((96, 96), bool)
        for x0, y0, x1, y1 in b:
            inside[y0:y1, x0:x1] = True
        assert (t[0] > 0.5).tolist() == inside.tolist()
        bright = x[0] > 0.3  # gain/gamma/noise jitter leave bright pixels bright
        assert (bright == inside).mean() > 0.97, rng


def test_colour_jitter_reaches_box_training_and_leaves_the_default_draws_alone():
    """``augment: {color_p: …}`` of a box config changes colours (here: saturation 0 makes every crop grey);
    with the default recipe (``color_p`` 0) the box augmenter draws what it always drew."""
    from pipeline.training.config import AugmentConfig
    from pipeline.training.data import jitter_intensity

    rng = np.random.default_rng(1)
    img = rng.uniform(0.2, 0.8, (3, 120, 120)).astype(np.float32)
    s = Sample("x", img, np.zeros((120, 120), np.int32), boxes=np.array([[10, 10, 60, 60]], np.float32))
    grey = BoxAugmenter(64, seed=2, augment=AugmentConfig(color_p=1.0, saturation=(0.0, 0.0), noise_p=0.0))
    x = grey(s)[0]
    assert np.allclose(x[0], x[1], atol=1e-6) and np.allclose(x[1], x[2], atol=1e-6)
    a, b = BoxAugmenter(64, seed=5), BoxAugmenter(64, seed=5, augment=AugmentConfig())
    assert all(np.array_equal(a(s)[0], b(s)[0]) for _ in range(3))
    cast = jitter_intensity(img, np.random.default_rng(0), AugmentConfig(color_p=1.0, channel_gain=(0.5, 1.5), noise_p=0.0,
                                                                         gain=(1.0, 1.0), gamma=(1.0, 1.0)))
    ratios = (cast.reshape(3, -1).mean(1) / img.reshape(3, -1).mean(1))
    assert ratios.max() - ratios.min() > 0.05  # channels scaled unequally: a colour cast
    one = jitter_intensity(img[:1], np.random.default_rng(0), AugmentConfig(color_p=1.0))  # one channel: no cast
    assert one.shape == (1, 120, 120)


def test_box_loss_rewards_a_mask_that_fills_its_boxes():
    import torch

    boxes = [np.array([[8, 8, 24, 20]])]
    targets = np.zeros((1, 4, 32, 32), np.float32)
    targets[0, 0, 8:20, 8:24] = 1
    targets[0, 3] = ellipse_labels(boxes[0].astype(float), (32, 32), 0.5) > 0
    good = torch.full((1, 3, 32, 32), -6.0)
    good[0, 0, 8:20, 8:24] = 6.0
    cross = torch.full((1, 3, 32, 32), -6.0)  # meets the projections with a thin cross only
    cross[0, 0, 14, 8:24] = 6.0
    cross[0, 0, 8:20, 16] = 6.0
    outside = good.clone()
    outside[0, 0, 24:30, 0:30] = 6.0  # background outside every box predicted as crown
    t = torch.from_numpy(targets)
    lg, lc, lo = (float(box_losses(x, t, boxes)) for x in (good, cross, outside))
    assert lg < lc and lg < lo


def test_box_metrics_one_to_one_at_iou_04():
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    pred = np.array([[0, 0, 10, 12], [1, 0, 11, 10], [20, 20, 27, 27], [60, 60, 70, 70]])
    iou = box_iou(truth, pred)
    assert iou[0, 0] == pytest.approx(100 / 120) and iou[1, 2] == pytest.approx(49 / 100)
    tp, fp, fn = box_counts(truth, pred)
    assert (tp, fp, fn) == (2, 2, 1)  # the duplicate of box 0 is a false positive: one to one
    assert box_scores(tp, fp, fn)["f1"] == pytest.approx(4 / 7)
    assert box_counts(truth, pred, counted=[True, True, False]) == (2, 2, 0)
    lab = np.zeros((20, 20), np.int32)
    lab[2:5, 3:9] = 1
    lab[10:20, 0:1] = 4
    assert boxes_of_labels(lab).tolist() == [[3, 2, 9, 5], [0, 10, 1, 20]]


@pytest.mark.slow  # training
def test_box_supervised_training_learns_bright_crowns(tmp_path):
    """A few dozen steps on synthetic 'crowns' (bright discs of varied size on darker ground, boxes only):
    the box F1 on a held-out image rises above what an untrained network gets."""
    from PIL import Image

    from pipeline.training.config import TrainConfig
    from pipeline.training.train import train

    rng = np.random.default_rng(0)
    lines = ["image_path,xmin,ymin,xmax,ymax,label"]
    for k in range(4):
        img = (rng.normal(60, 8, (128, 128, 3))).clip(0, 255)
        yy, xx = np.mgrid[:128, :128]
        for _ in range(6):
            cy, cx, r = rng.integers(16, 112), rng.integers(16, 112), rng.integers(6, 12)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (60, 170, 60)
            lines.append(f"s{k}.png,{cx - r},{cy - r},{cx + r + 1},{cy + r + 1},Tree")
        Image.fromarray(img.astype(np.uint8)).save(tmp_path / f"s{k}.png")
    (tmp_path / "boxes.csv").write_text("\n".join(lines) + "\n")
    cfg = TrainConfig.model_validate({
        "data": {"kind": "boxes", "rasters": [str(tmp_path / "s*.png")], "boxes": [str(tmp_path / "boxes.csv")],
                 "val_names": ["s3"]},
        "out": str(tmp_path / "m"), "epochs": 12, "batch_size": 4, "crop": 96, "crops_per_image": 4, "threads": 2,
        "pixel_size": [0.1, "m"], "classes": ["tree"], "lr": 3e-3, "val_every": 12,
        "model": {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    })
    summary = train(cfg)
    import json

    md = json.loads((tmp_path / "m" / "m.json").read_text())
    assert md["pixel_size"] == [0.1, "m"] and md["training"]["kind"] == "boxes"
    assert md["validation"]["all"]["f1"] > 0.5, summary["history"][-1]


def test_evaluate_boxes_on_a_real_tile_counts_and_classes(tmp_path):
    """`seamline evaluate --boxes`: truth boxes as rectangles of a Seamline-like output give F1 1; per class."""
    import json

    import geopandas as gpd
    import rasterio
    import shapely

    from pipeline.evaluation.boxeval import evaluate_boxes

    tif, gdf = deepforest_crowns()
    with rasterio.open(tif) as ds:
        summary = {"input": str(tif), "height": ds.height, "width": ds.width, "transform": list(ds.transform)}
    pred = gdf.copy()
    pred["geometry"] = [shapely.Polygon([(b[0], b[1]), (b[2], b[1]), (b[2], b[3])]) for b in pred.geometry.bounds.values]
    pred["class"] = ["tree"] * 40 + ["dead"] * 21  # a triangle's box is its rectangle's box
    pred.iloc[:55].to_parquet(tmp_path / "p.parquet")
    (tmp_path / "p.json").write_text(json.dumps(summary))
    r = evaluate_boxes(tmp_path / "p.parquet", shared("aerial", "deepforest", "OSBS_029.csv"))
    assert (r["all"]["tp"], r["all"]["fp"], r["all"]["fn"]) == (55, 0, 6)
    truth = gdf.copy()
    truth["class"] = pred["class"]
    truth.to_file(tmp_path / "t.gpkg")
    r = evaluate_boxes(tmp_path / "p.parquet", tmp_path / "t.gpkg")
    assert r["per_class"]["tree"]["f1"] == 1.0 and r["per_class"]["dead"]["fn"] == 6
    assert isinstance(gpd.read_parquet(tmp_path / "p.parquet"), gpd.GeoDataFrame)


def test_evaluate_reports_per_class_for_polygons(tmp_path):
    """`seamline evaluate` (masks, IoU 0.5) per class when both polygon files carry a class column: matching
    within each class, so an outline found with the wrong class is a miss of one class and a false one of
    the other."""
    import geopandas as gpd
    import shapely

    from pipeline.evaluation.evaluate import evaluate_files, format_table

    squares = [shapely.box(x, 0, x + 10, 10) for x in (0, 20, 40, 60)]
    truth = gpd.GeoDataFrame({"class": ["alive", "alive", "dead", "dead"]}, geometry=squares, crs="EPSG:32617")
    pred = gpd.GeoDataFrame({"class": ["alive", "dead", "dead", "dead"]}, geometry=squares, crs="EPSG:32617")
    truth.to_file(tmp_path / "t.gpkg")
    pred.to_file(tmp_path / "p.gpkg")
    from affine import Affine

    r = evaluate_files(tmp_path / "p.gpkg", tmp_path / "t.gpkg", like=((12, 72), Affine(1, 0, 0, 0, -1, 11), "EPSG:32617"))
    assert r["all"]["at_0.5"]["tp"] == 4  # classes ignored overall
    assert (r["per_class"]["alive"]["tp"], r["per_class"]["alive"]["fn"]) == (1, 1)
    assert (r["per_class"]["dead"]["tp"], r["per_class"]["dead"]["fp"]) == (2, 1)
    assert "per class" in format_table(r)


def test_a_vrt_window_of_a_scene_trains_with_its_own_boxes():
    """The held-out split of OSBS_029 (configs/data/osbs_029_split): each half is a GDAL VRT window of the real
    scene with its boxes in the window's pixels; training reads the VRT through GDAL, the pixels are the scene's."""
    import rasterio

    split = Path(__file__).resolve().parents[1] / "configs" / "data" / "osbs_029_split"
    with rasterio.open(shared("aerial", "deepforest", "OSBS_029.tif")) as ds:
        scene = ds.read()
    truth = read_box_file(shared("aerial", "deepforest", "OSBS_029.csv"))["OSBS_029.tif"]
    for half, rows in (("top", slice(0, 200)), ("bottom", slice(200, 400))):
        (s,) = load_box_dataset([str(split / f"OSBS_029_{half}.vrt")], [str(split / f"OSBS_029_{half}.csv")])
        raw = read_box_file(split / f"OSBS_029_{half}.csv")[f"OSBS_029_{half}.vrt"]
        with rasterio.open(split / f"OSBS_029_{half}.vrt") as ds:
            assert (ds.read() == scene[:, rows]).all()
        assert s.image.shape == (3, 200, 400) and len(s.boxes) == len(raw)
    # every truth box is scored in exactly one half (the one holding its centre)
    in_bottom = sum((b[1] + b[3]) / 2 >= 200 for b in truth)
    assert in_bottom == len(read_box_file(split / "OSBS_029_bottom.csv")["OSBS_029_bottom.vrt"]) == 29


def test_source_balance_shares_crops_between_images_not_tiles():
    from pipeline.training.data import source_weights

    names = ["big@0_0", "big@0_400", "big@400_0", "big@400_400", "small"]
    samples = [Sample(n, np.zeros((3, 4, 4), np.float32), np.zeros((4, 4), np.int32), "boxes") for n in names]
    assert np.allclose(source_weights(samples, 0.0), 0.2)  # every tile alike
    assert np.allclose(source_weights(samples, 1.0), [0.125] * 4 + [0.5])  # every image alike
    half = source_weights(samples, 0.5)  # a source of n tiles weighs sqrt(n): 2 : 1
    assert np.isclose(half[:4].sum(), 2 / 3) and np.isclose(half[4], 1 / 3)


def test_box_files_find_an_image_by_name_then_by_stem(tmp_path):
    """A box file of several images names one tile `OSBS_029.tif`; the same tile as `OSBS_029.png` (NEON tiles
    ship as both) still finds its boxes, in training and in `evaluate --boxes`; a name matching nothing fails."""
    import json

    import shapely

    from pipeline.evaluation.boxeval import evaluate_boxes
    from pipeline.evaluation.boxfiles import boxes_of_image

    src = shared("aerial", "deepforest", "OSBS_029.csv").read_text().splitlines()
    multi = tmp_path / "all.csv"
    multi.write_text("\n".join(src + ["other_tile.tif,1,1,20,20,Tree", "OSBS_029_b.png,1,1,9,9,Tree"]) + "\n")
    table = read_box_file(multi)
    assert len(boxes_of_image(table, "/data/OSBS_029.png")) == 61
    assert boxes_of_image(table, "OSBS_029_b.tif") == [(1.0, 1.0, 9.0, 9.0, "Tree")]
    assert boxes_of_image(table, "SJER_1.png") is None

    tif, gdf = deepforest_crowns()
    pred = gdf.copy()
    pred["geometry"] = [shapely.box(*b) for b in gdf.geometry.bounds.values]
    pred.to_parquet(tmp_path / "p.parquet")
    import rasterio

    with rasterio.open(tif) as ds:
        summary = {"input": "/scenes/OSBS_029.png", "height": ds.height, "width": ds.width, "transform": list(ds.transform)}
    (tmp_path / "p.json").write_text(json.dumps(summary))
    r = evaluate_boxes(tmp_path / "p.parquet", multi)
    assert (r["all"]["tp"], r["all"]["fp"], r["all"]["fn"]) == (61, 0, 0)
    summary["input"] = "/scenes/SJER_1.png"
    (tmp_path / "p.json").write_text(json.dumps(summary))
    with pytest.raises(InputError, match="none named 'SJER_1.png'"):
        evaluate_boxes(tmp_path / "p.parquet", multi)


def test_evaluate_boxes_per_class_only_with_classes_in_common(tmp_path):
    """A one-class crown model against SOAP_061's Alive/Dead boxes: the overall row only (per-class rows of a
    class the model never names would all read 0); with a class in common the rows are there."""
    import json

    import geopandas as gpd
    import shapely

    from pipeline.evaluation.boxeval import evaluate_boxes

    truth = read_box_file(shared("aerial", "neon_trees", "SOAP_061.xml"))["SOAP_061.png"]
    pred = gpd.GeoDataFrame({"class": ["tree"] * len(truth)}, geometry=[shapely.box(*r[:4]) for r in truth])
    pred.to_parquet(tmp_path / "p.parquet")
    summary = {"input": "SOAP_061.png", "height": 400, "width": 400, "transform": [1, 0, 0, 0, 1, 0]}
    (tmp_path / "p.json").write_text(json.dumps(summary))
    r = evaluate_boxes(tmp_path / "p.parquet", shared("aerial", "neon_trees", "SOAP_061.xml"))
    assert r["all"]["f1"] == 1.0 and "per_class" not in r
    pred["class"] = [t[4] for t in truth]
    pred.to_parquet(tmp_path / "p.parquet")
    r = evaluate_boxes(tmp_path / "p.parquet", shared("aerial", "neon_trees", "SOAP_061.xml"))
    assert r["per_class"]["Alive"]["tp"] == 9 and r["per_class"]["Dead"]["tp"] == 28
