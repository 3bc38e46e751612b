"""``seamline evaluate`` end to end on tiny files: reading and rasterizing each input kind onto one grid,
the seam/interior split, the CLI's JSON, and one-line errors that name the offending file.

Squares drawn as polygons on pixel edges rasterize to exactly the pixels of the label image, so a correct
pipeline must score AP 1.0 at every threshold; anything else means the grids disagree.
"""

from __future__ import annotations

import argparse
import json
import warnings

import geopandas as gpd
import numpy as np
import pytest
import tifffile
from shapely.geometry import Point, box

from pipeline.cli.evaluate import add_evaluate_command
from pipeline.errors import InputError, ParameterError
from pipeline.evaluation.evaluate import evaluate_files, evaluate_pair, format_table, load_labels

# (row0, row1, col0, col1) of three squares on a 64 x 64 image; the second one crosses the row seam at 32.
SQUARES = [(2, 10, 2, 10), (28, 36, 20, 40), (44, 54, 44, 54)]


def label_image(squares=SQUARES, shape=(64, 64)) -> np.ndarray:
    lab = np.zeros(shape, np.uint16)
    for i, (r0, r1, c0, c1) in enumerate(squares, 1):
        lab[r0:r1, c0:c1] = i
    return lab


def polygons(squares=SQUARES, crs=None) -> gpd.GeoDataFrame:
    geoms = [box(c0, r0, c1, r1) for r0, r1, c0, c1 in squares]  # x = column, y = row
    return gpd.GeoDataFrame({"object_id": np.arange(1, len(geoms) + 1), "score": 0.9}, geometry=geoms, crs=crs)


def write_vector(gdf: gpd.GeoDataFrame, path, **kw):
    with warnings.catch_warnings():  # pyogrio warns when pixel-coordinate layers have no CRS, as they should
        warnings.simplefilter("ignore", UserWarning)
        if str(path).endswith(".parquet"):
            gdf.to_parquet(path)
        else:
            gdf.to_file(path, **kw)
    return path


def summary(path, tile=32, shape=(64, 64)):
    path.with_suffix(".json").write_text(json.dumps(
        {"width": shape[1], "height": shape[0], "transform": [1, 0, 0, 0, 1, 0], "tiling": {"tile": tile, "halo": 8}}))


def ap(result, group="all"):
    return result[group]["ap"]


def test_gpkg_vs_label_tiff_is_perfect(tmp_path):
    tifffile.imwrite(tmp_path / "gt.tif", label_image())
    pred = write_vector(polygons(), tmp_path / "pred.gpkg", layer="objects")
    r = evaluate_files(pred, tmp_path / "gt.tif")
    assert ap(r) == [1.0] * 10 and r["all"]["at_0.5"]["pq"] == 1.0
    assert "seam" not in r and "seam/interior split omitted" in r["note"]
    json.dumps(r)  # numbers, strings and lists only


def test_dropped_polygon_is_one_fn(tmp_path):
    tifffile.imwrite(tmp_path / "gt.tif", label_image())
    pred = write_vector(polygons(SQUARES[:2]), tmp_path / "pred.gpkg", layer="objects")
    s = evaluate_files(pred, tmp_path / "gt.tif")["all"]["at_0.5"]
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 1)


def test_label_tiff_vs_geojson_ground_truth(tmp_path):
    tifffile.imwrite(tmp_path / "pred.tif", label_image(SQUARES + [(56, 60, 2, 6)]))
    gt = write_vector(polygons(), tmp_path / "gt.geojson", driver="GeoJSON")
    s = evaluate_files(tmp_path / "pred.tif", gt)["all"]["at_0.5"]
    assert (s["tp"], s["fp"], s["fn"]) == (3, 1, 0)


def test_png_labels_and_geotiff_grid(tmp_path):
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    Image.fromarray(label_image()).save(tmp_path / "pred.png")
    transform = from_origin(500000.0, 4000000.0, 0.5, 0.5)  # 0.5 m pixels, north up
    with rasterio.open(tmp_path / "gt.tif", "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16",
                       crs="EPSG:32633", transform=transform) as ds:
        ds.write(label_image(), 1)
    labels, t = load_labels(tmp_path / "gt.tif")
    assert t == transform and labels.dtype == np.int64 and labels.shape == (64, 64)
    world = gpd.GeoDataFrame(geometry=[box(*(transform * (c0, r1)), *(transform * (c1, r0))) for r0, r1, c0, c1 in SQUARES],
                             crs="EPSG:32633")
    gt_vec = write_vector(world, tmp_path / "gt.gpkg")
    assert ap(evaluate_files(tmp_path / "pred.png", tmp_path / "gt.tif")) == [1.0] * 10
    # the same polygons rasterized on the GeoTIFF's grid, and again after a round trip through another CRS
    assert ap(evaluate_files(tmp_path / "gt.tif", gt_vec)) == [1.0] * 10
    write_vector(world.to_crs("EPSG:4326"), tmp_path / "gt_ll.gpkg")
    assert ap(evaluate_files(tmp_path / "gt.tif", tmp_path / "gt_ll.gpkg"))[0] == 1.0


def test_two_vectors_need_a_grid(tmp_path):
    pred = write_vector(polygons(), tmp_path / "pred.parquet")
    gt = write_vector(polygons(), tmp_path / "gt.gpkg")
    with pytest.raises(InputError, match=r"pred\.parquet.*gt\.gpkg.*--like"):
        evaluate_files(pred, gt)
    # --like is typically the RGB scene the polygons were drawn on: only its grid matters
    tifffile.imwrite(tmp_path / "image.tif", np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    assert ap(evaluate_files(pred, gt, like=tmp_path / "image.tif")) == [1.0] * 10
    labels, transform = load_labels(gt, like=((64, 64), [1, 0, 0, 0, 1, 0]))
    assert np.array_equal(labels, label_image()) and transform.is_identity
    # a mosaic segmented as a GDAL VRT is its own grid too (only the header is read)
    (tmp_path / "mosaic.vrt").write_text(
        '<VRTDataset rasterXSize="64" rasterYSize="64"><GeoTransform>0, 1, 0, 0, 0, 1</GeoTransform>'
        '<VRTRasterBand dataType="Byte" band="1"><SimpleSource><SourceFilename relativeToVRT="1">image.tif'
        '</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>')
    assert ap(evaluate_files(pred, gt, like=tmp_path / "mosaic.vrt")) == [1.0] * 10
    for bad, words in ((tmp_path / "gt.gpkg", "GDAL can read"), (tmp_path / "missing.vrt", "not found")):
        with pytest.raises(InputError, match=rf"--like .*{bad.name}.*{words}"):
            evaluate_files(pred, gt, like=bad)


def test_run_summary_gives_grid_and_tile(tmp_path):
    pred = write_vector(polygons(), tmp_path / "scene.parquet")
    summary(pred, tile=32)
    gt = write_vector(polygons(), tmp_path / "gt.geojson", driver="GeoJSON")
    r = evaluate_files(pred, gt)
    assert (r["tile"], r["tile_source"]) == (32, "run summary")
    assert (r["seam"]["n_gt"], r["interior"]["n_gt"]) == (1, 2)
    assert evaluate_files(pred, gt, tile=16)["tile_source"] == "option"
    (tmp_path / "scene.json").write_text('{"width": 64, "height": 64, "transform": [1, 0, 0, 0, 1, 0], "tiling": {}}')
    with pytest.raises(InputError, match=r"scene\.json.*tiling\.tile"):
        evaluate_files(pred, gt)


def test_ground_truth_crop_of_a_tiled_scene(tmp_path):
    """Ground truth usually covers a crop of the scene: the run's seams must be placed in the run's grid."""
    import rasterio
    from rasterio.transform import Affine

    pred = write_vector(polygons(), tmp_path / "scene.gpkg", layer="objects")
    summary(pred, tile=32)
    crop = label_image()[16:, 16:]
    with rasterio.open(tmp_path / "crop.tif", "w", driver="GTiff", width=48, height=48, count=1, dtype="uint16",
                       transform=Affine.translation(16, 16)) as ds:
        ds.write(crop, 1)
    r = evaluate_files(pred, tmp_path / "crop.tif")
    assert r["origin"] == [16, 16] and r["all"]["ap"] == [1.0] * 10
    assert (r["seam"]["n_gt"], r["interior"]["n_gt"]) == (1, 1)  # square 2 crosses scene row 32 = crop row 16


def test_plain_label_image_of_a_georeferenced_run(tmp_path):
    from rasterio.transform import from_origin

    transform = from_origin(300000.0, 5000000.0, 2.0, 2.0)
    world = gpd.GeoDataFrame(geometry=[box(*(transform * (c0, r1)), *(transform * (c1, r0))) for r0, r1, c0, c1 in SQUARES])
    pred = write_vector(world, tmp_path / "scene.parquet")
    pred.with_suffix(".json").write_text(json.dumps({"width": 64, "height": 64, "transform": list(transform)[:6],
                                                     "tiling": {"tile": 32, "halo": 8}}))
    tifffile.imwrite(tmp_path / "gt.tif", label_image())  # exported without georeferencing
    assert evaluate_files(pred, tmp_path / "gt.tif")["all"]["ap"] == [1.0] * 10
    (tmp_path / "scene.json").unlink()
    with pytest.raises(InputError, match=r"scene\.parquet: no polygon falls on the 64x64 px grid"):
        evaluate_files(pred, tmp_path / "gt.tif")


def test_seam_and_interior_split():
    gt = label_image()
    pred = label_image(SQUARES[:1] + [(44, 54, 44, 54)] + [(20, 24, 30, 34)])  # seam square missed, a seam FP
    r = evaluate_pair(pred, gt, tile=32, seam_band=8)
    seam, interior = r["seam"]["at_0.5"], r["interior"]["at_0.5"]
    assert (r["seam"]["n_gt"], r["interior"]["n_gt"]) == (1, 2)
    assert (seam["tp"], seam["fp"], seam["fn"]) == (0, 1, 1)
    assert (interior["tp"], interior["fp"], interior["fn"]) == (2, 0, 0) and r["interior"]["ap"] == [1.0] * 10


def test_seam_band_edges():
    """Seam lines lie on pixel edges at multiples of the tile, not on the image border: with band 8 the
    line at x = 32 owns columns 24..39."""
    def group(c0, c1, band=8):
        lab = label_image([(50, 54, c0, c1)])
        r = evaluate_pair(lab, lab, tile=32, seam_band=band)
        return "seam" if r["seam"]["n_gt"] else "interior"

    assert (group(20, 24), group(21, 25), group(40, 44), group(39, 43)) == ("interior", "seam", "interior", "seam")
    assert group(0, 4, band=8) == "interior" and group(60, 64, band=8) == "interior"  # image border is no seam
    assert group(28, 36, band=0) == "interior"


def test_cli_writes_json(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "gt.tif", label_image())
    pred = write_vector(polygons(SQUARES[:2]), tmp_path / "pred.gpkg", layer="objects")
    parser = argparse.ArgumentParser(prog="seamline")
    add_evaluate_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", str(pred), str(tmp_path / "gt.tif"), "--tile", "32",
                              "--json", str(tmp_path / "out" / "metrics.json")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "AP@0.50" in out and "AP@0.95" in out and "interior" in out
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["all"]["at_0.5"]["fn"] == 1 and data["interior"]["at_0.5"]["fn"] == 1 and data["seam"]["ap"][0] == 1.0
    assert format_table(data) in out


@pytest.mark.parametrize("name, make, pattern", [
    ("missing.tif", None, r"missing\.tif: file not found"),
    ("labels.txt", lambda p: p.write_text("1 2"), r"labels\.txt: unsupported file type '\.txt'"),
    ("stack.tif", lambda p: tifffile.imwrite(p, np.ones((3, 8, 8), np.uint8)), r"stack\.tif: expected a 2-D label image.*\(3, 8, 8\)"),
    ("float.tif", lambda p: tifffile.imwrite(p, np.full((8, 8), 0.5, np.float32)), r"float\.tif: expected integer object ids"),
    ("broken.tif", lambda p: p.write_bytes(b"not a tiff"), r"broken\.tif: not a readable TIFF"),
    ("broken.gpkg", lambda p: p.write_bytes(b"not a geopackage"), r"broken\.gpkg: not readable as polygons"),
])
def test_bad_inputs_name_the_file(tmp_path, name, make, pattern):
    path = tmp_path / name
    if make:
        make(path)
    tifffile.imwrite(tmp_path / "ok.tif", label_image())
    with pytest.raises(InputError, match=pattern) as err:
        evaluate_files(path, tmp_path / "ok.tif")
    assert "\n" not in str(err.value)


def test_other_bad_inputs(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", label_image())
    tifffile.imwrite(tmp_path / "b.tif", label_image(shape=(64, 65)))
    with pytest.raises(InputError, match=r"a\.tif is 64x64 px but .*b\.tif is 64x65"):
        evaluate_files(tmp_path / "a.tif", tmp_path / "b.tif")
    points = write_vector(gpd.GeoDataFrame(geometry=[Point(3, 3)]), tmp_path / "points.geojson", driver="GeoJSON")
    with pytest.raises(InputError, match=r"points\.geojson: expected Polygon.*found Point"):
        evaluate_files(points, tmp_path / "a.tif")
    two = tmp_path / "two.gpkg"
    write_vector(polygons(), two, layer="a")
    write_vector(polygons(), two, layer="b")
    with pytest.raises(InputError, match=r"two\.gpkg: expected a layer 'objects'"):
        evaluate_files(two, tmp_path / "a.tif")
    with pytest.raises(ParameterError, match="--tile"):
        evaluate_files(tmp_path / "a.tif", tmp_path / "a.tif", tile=0)
    with pytest.raises(InputError, match="differs from ground truth grid"):
        evaluate_pair(np.zeros((4, 4), int), np.zeros((4, 5), int))
