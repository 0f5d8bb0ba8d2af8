"""mscseg.exports: ImageJ ROI zips and QuPath GeoJSON that give back each cell's own pixels; mscseg-predict --rois --geojson."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.path import Path as MplPath

from data.imageio import read_array, write_png
from data.outputs import OutputExistsError
from mscseg import predict
from mscseg.exports import (
    OutputOptions, boundary_rings, cell_outlines, cells_geojson, mask_polygons, ring_area, write_geojson, write_roi_zip,
)
from mscseg.predict import LoadedModel, measure_cells

roifile = pytest.importorskip("roifile")


def imagej_fill(rings: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The pixels ImageJ fills for a ROI: those whose centre (x + 0.5, y + 0.5) is inside (even-odd over all rings)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1)
    inside = np.zeros(centres.shape[0], bool)
    for ring in rings:
        inside ^= MplPath(np.asarray(ring, np.float64)).contains_points(centres)
    return inside.reshape(shape)


def roi_rings(roi) -> list[np.ndarray]:
    """Every ring of a ROI read back with roifile (one for a polygon, all sub-paths for a composite ROI)."""
    return [np.asarray(ring) for ring in roi.coordinates(multi=True)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def hand_made_labels() -> tuple[np.ndarray, set[int]]:
    """A 40 x 48 label image of awkward cells, and the labels of its convex cells of at least 10 px."""
    labels = np.zeros((40, 48), np.int32)
    labels[2:6, 2:7] = 1                                   # rectangle, 20 px
    yy, xx = np.mgrid[0:40, 0:48]
    labels[(yy - 12) ** 2 + (xx - 12) ** 2 <= 16] = 2      # disk, r = 4
    labels[20:30, 2:4] = 3
    labels[28:30, 2:10] = 3                                # L shape
    for k in range(6):
        labels[2 + k, 20 + k] = 4                          # diagonal staircase: pixels touch at corners only
    labels[10:20, 30:40] = 5
    labels[13:16, 33:36] = 0                               # a ring around a hole
    labels[0:3, 44:48] = 6                                 # in the image corner, 12 px
    labels[36, 20] = 7                                     # one pixel
    labels[32:36, 30:34] = 8
    labels[37:40, 40:44] = 8                               # two separate parts (a cell painted over)
    labels[24:28, 20:26] = 9
    labels[24:28, 26:28] = 10                              # two cells side by side
    labels[8:12, 20:24] = 11
    labels[12:14, 24:26] = 11                              # two blocks meeting at one corner (8-connected)
    return labels, {1, 2, 6, 9}


def test_one_pixel_and_diagonal_pixels_trace_along_pixel_edges():
    single = np.zeros((3, 3), bool)
    single[1, 1] = True
    [(ring, pixel)] = boundary_rings(single)
    assert ring.tolist() == [[1, 1], [2, 1], [2, 2], [1, 2]] and pixel == (1, 1) and ring_area(ring) == 1.0
    diagonal = np.zeros((3, 3), bool)
    diagonal[0, 0] = diagonal[1, 1] = True
    [(ring, _)] = boundary_rings(diagonal)                 # one outline through the shared corner (1, 1)
    assert ring.tolist() == [[0, 0], [1, 0], [1, 1], [2, 1], [2, 2], [1, 2], [1, 1], [0, 1]]
    donut = np.ones((5, 5), bool)
    donut[2, 2] = False
    [[outer, hole]] = mask_polygons(donut)
    assert ring_area(outer) == 25.0 and ring_area(hole) == -1.0


def test_roi_zip_round_trip_gives_each_cells_pixels(tmp_path):
    labels, convex = hand_made_labels()
    path = tmp_path / "rois" / "image.zip"
    assert write_roi_zip(path, cell_outlines(labels)) == 11
    rois = roifile.roiread(path)
    assert [roi.name for roi in rois] == [f"{label:04d}" for label in range(1, 12)]
    assert sorted(zipfile.ZipFile(path).namelist()) == [f"{label:04d}.roi" for label in range(1, 12)]
    for roi in rois:
        label = int(roi.name)
        cell = labels == label
        filled = imagej_fill(roi_rings(roi), labels.shape)
        assert iou(filled, cell) >= 0.98, label
        if label in convex:
            assert cell.sum() >= 10 and iou(filled, cell) == 1.0
        assert np.array_equal(filled, cell), label
        simple = label not in (5, 8)
        assert (roi.roitype == roifile.ROI_TYPE.POLYGON) == simple and roi.composite != simple


def _random_labels(seed: int, shape=(64, 80)) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 2.5)
    labels, _ = ndimage.label(field > 0.05, structure=np.ones((3, 3), bool))
    return labels.astype(np.int32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roi_and_geojson_round_trip_on_random_blobs(tmp_path, seed):
    labels = _random_labels(seed)
    outlines = cell_outlines(labels)
    write_roi_zip(tmp_path / "r.zip", outlines)
    rois = roifile.roiread(tmp_path / "r.zip")
    assert len(rois) == labels.max() > 5
    for roi in rois:
        assert np.array_equal(imagej_fill(roi_rings(roi), labels.shape), labels == int(roi.name))
    cells = measure_cells(labels, "blobs")
    for feature in cells_geojson(outlines, cells)["features"]:
        label = int(feature["properties"]["name"])
        polygons = [feature["geometry"]["coordinates"]] if feature["geometry"]["type"] == "Polygon" \
            else feature["geometry"]["coordinates"]
        rings = [np.asarray(ring[:-1]) for polygon in polygons for ring in polygon]
        assert np.array_equal(imagej_fill(rings, labels.shape), labels == label)


def geojson_area(geometry: dict) -> float:
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return sum(ring_area(np.asarray(ring[:-1])) for polygon in polygons for ring in polygon)


def test_geojson_is_a_qupath_feature_collection_with_the_cells_areas(tmp_path):
    labels, _ = hand_made_labels()
    cells = measure_cells(labels, "image")
    path = tmp_path / "geojson" / "image.geojson"
    assert write_geojson(path, cell_outlines(labels), cells) == 11
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 11
    rows = cells.set_index("cell")
    for feature in collection["features"]:
        properties, geometry = feature["properties"], feature["geometry"]
        label = int(properties["name"])
        assert properties["objectType"] == "detection" and properties["classification"]["name"] == "cell"
        pixels = int((labels == label).sum())
        assert abs(geojson_area(geometry) - pixels) <= rows.loc[label, "perimeter_px"] / 2
        assert geojson_area(geometry) == pixels
        assert properties["measurements"]["area_px"] == pixels
        assert "score" not in properties["measurements"]          # NaN is left out (JSON has no NaN)
        for polygon in ([geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]):
            assert all(ring[0] == ring[-1] for ring in polygon)  # closed rings
    types = {int(f["properties"]["name"]): f["geometry"]["type"] for f in collection["features"]}
    assert types[8] == "MultiPolygon" and types[5] == "Polygon" and types[1] == "Polygon"


def test_empty_image_gives_an_empty_zip_and_collection(tmp_path):
    labels = np.zeros((8, 8), np.int32)
    assert write_roi_zip(tmp_path / "e.zip", cell_outlines(labels)) == 0
    assert zipfile.ZipFile(tmp_path / "e.zip").namelist() == []
    assert cells_geojson(cell_outlines(labels), measure_cells(labels, "e")) == {"type": "FeatureCollection", "features": []}


# ---------------------------------------------------------------- mscseg-predict --rois --geojson --pixel-size

@pytest.fixture
def fake_semantic_run(monkeypatch, tmp_path):
    """A semantic 'run' whose network says p = channel 0 (bright pixels are cells), at scale 1."""
    import keras_semseg.predict as keras_predict

    monkeypatch.setattr(keras_predict, "predict_probs",
                        lambda model, images, size, batch_size=8: [image[..., 0].astype(np.float64) for image in images])
    loaded = LoadedModel("semantic", "unet", None, 64, tmp_path / "run")
    monkeypatch.setattr(predict, "load_model", lambda run_dir, which="best", device=None: loaded)
    return tmp_path / "run"


def write_micrographs(folder: Path) -> dict[str, np.ndarray]:
    """``cells.tif`` (ImageJ TIFF, 0.5 µm pixels) and ``plain.png`` (no pixel size); returns their cell masks."""
    import tifffile

    labels, _ = hand_made_labels()
    mask = labels > 0
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "cells.tif", (mask * 200).astype(np.uint8), imagej=True, resolution=(2.0, 2.0),
                     metadata={"unit": "um"})
    write_png(folder / "plain.png", (mask * 200).astype(np.uint8))
    return {"cells": mask, "plain": mask}


def test_predict_writes_rois_geojson_and_micrometres(fake_semantic_run, tmp_path):
    write_micrographs(tmp_path / "images")
    out = tmp_path / "out"
    assert predict.main(["--model", str(fake_semantic_run), "--images", str(tmp_path / "images"), "--out", str(out),
                         "--threshold", "0.5", "--rois", "--geojson"]) == 0
    counts = pd.read_csv(out / "counts.csv").set_index("image")
    for name in ("cells", "plain"):
        labels = read_array(out / "labels" / f"{name}.png").astype(np.int32)
        rois = roifile.roiread(out / "rois" / f"{name}.zip")
        assert len(rois) == counts.loc[name, "cell_count"] == labels.max()
        for roi in rois:
            assert np.array_equal(imagej_fill(roi_rings(roi), labels.shape), labels == int(roi.name))
        features = json.loads((out / "geojson" / f"{name}.geojson").read_text())["features"]
        assert len(features) == counts.loc[name, "cell_count"]
    cells = pd.read_csv(out / "cells" / "cells.csv")
    np.testing.assert_allclose(cells["area_um2"], cells["area_px"] * 0.25)
    np.testing.assert_allclose(cells["perimeter_um"], cells["perimeter_px"] * 0.5)
    np.testing.assert_allclose(cells["major_axis_um"], cells["major_axis_px"] * 0.5)
    assert set(cells["pixel_size_source"]) == {"ImageJ TIFF metadata"}
    assert "area_um2" not in pd.read_csv(out / "cells" / "plain.csv").columns
    assert counts.loc["cells", "mean_area_um2"] == pytest.approx(cells["area_um2"].mean())
    assert np.isnan(counts.loc["plain", "mean_area_um2"]) and counts.loc["cells", "pixel_size_x_um"] == 0.5
    record = json.loads((out / "predict.json").read_text())
    assert record["pixel_size"] == {"cells": {"y_um": 0.5, "x_um": 0.5, "source": "ImageJ TIFF metadata"}, "plain": None}
    assert record["units"].startswith("\u00b5m columns for 1 of 2 images")
    assert record["exports"] == {"rois": True, "geojson": True}
    features = json.loads((out / "geojson" / "cells.geojson").read_text())["features"]
    assert {"area_um2", "perimeter_um", "pixel_size_x_um"} <= set(features[0]["properties"]["measurements"])


def test_predict_pixel_size_option_and_its_checks(fake_semantic_run, tmp_path, capsys):
    write_micrographs(tmp_path / "images")
    out = tmp_path / "out"
    assert predict.main(["--model", str(fake_semantic_run), "--images", str(tmp_path / "images" / "plain.png"),
                         "--out", str(out), "--threshold", "0.5", "--pixel-size", "0.2", "0.4"]) == 0
    cells = pd.read_csv(out / "cells" / "plain.csv")
    np.testing.assert_allclose(cells["area_um2"], cells["area_px"] * 0.08)
    assert set(cells["pixel_size_source"]) == {"--pixel-size"} and not (out / "rois").exists()
    square = cells[(cells["centroid_x"] == 4.0) & (cells["centroid_y"] == 3.5)].iloc[0]  # the 4 x 5 px rectangle: 0.8 x 2.0 µm
    assert square["area_um2"] == pytest.approx(1.6)
    assert square["major_axis_um"] == pytest.approx(4 * np.sqrt((5 ** 2 - 1) / 12 * 0.4 ** 2))
    assert square["minor_axis_um"] == pytest.approx(4 * np.sqrt((4 ** 2 - 1) / 12 * 0.2 ** 2))
    record = json.loads((out / "predict.json").read_text())
    assert record["pixel_size"]["plain"]["source"] == "--pixel-size" and record["units"].startswith("\u00b5m columns for every")
    # Without a pixel size the table stays in pixels and predict.json says so.
    plain = tmp_path / "plain"
    predict.predict_folder(fake_semantic_run, [tmp_path / "images" / "plain.png"], plain, threshold=0.5)
    assert "mean_area_um2" not in pd.read_csv(plain / "counts.csv").columns
    assert json.loads((plain / "predict.json").read_text())["units"].startswith("no pixel size")
    for bad in (["0"], ["-1"], ["1", "2", "3"], ["nan"]):
        assert predict.main(["--model", str(fake_semantic_run), "--images", str(tmp_path / "images"), "--out",
                             str(tmp_path / "bad"), "--pixel-size", *bad]) == 2
        assert "--pixel-size takes one or two positive numbers" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    # The ROI zip is an output like the others: not overwritten without --overwrite.
    options = OutputOptions(rois=True)
    predict.predict_folder(fake_semantic_run, [tmp_path / "images" / "plain.png"], tmp_path / "again", threshold=0.5,
                           outputs=options)
    with pytest.raises(OutputExistsError, match="already exists"):
        predict.predict_folder(fake_semantic_run, [tmp_path / "images" / "plain.png"], tmp_path / "again", threshold=0.5,
                               outputs=options)


@pytest.mark.realdata
def test_real_micrograph_rois_match_the_cells_table(usiigaci_root, fake_semantic_run, tmp_path):
    """A Usiigaci micrograph through predict --rois --geojson: one ROI per cell, each filling to its cell's pixels."""
    image = sorted((usiigaci_root / "val").glob("*/raw.tif"))[0]
    out = tmp_path / "real"
    assert predict.main(["--model", str(fake_semantic_run), "--images", str(image), "--out", str(out), "--threshold", "0.6",
                         "--min-area", "30", "--rois", "--geojson"]) == 0
    name = pd.read_csv(out / "counts.csv")["image"].iloc[0]
    count = int(pd.read_csv(out / "counts.csv")["cell_count"].iloc[0])
    cells = pd.read_csv(out / "cells" / f"{name}.csv").set_index("cell")
    labels = read_array(out / "labels" / f"{name}.png").astype(np.int32)
    rois = roifile.roiread(out / "rois" / f"{name}.zip")
    assert len(rois) == count > 0
    largest = max(rois, key=lambda roi: int(cells.loc[int(roi.name), "area_px"]))
    filled = imagej_fill(roi_rings(largest), labels.shape)
    assert filled.sum() == cells["area_px"].max() and np.array_equal(filled, labels == int(largest.name))
    assert len(json.loads((out / "geojson" / f"{name}.geojson").read_text())["features"]) == count
