"""mscseg.napari_reader and the npe2 manifest: layer-data tuples for predict and results folders, without napari or Qt."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.imageio import read_array, write_png
from mscseg import predict
from mscseg.layout import Layout
from mscseg.napari_reader import get_reader, paint_results, read_predict_folder, read_results_folder
from test_exports import fake_semantic_run, write_micrographs  # noqa: F401 - fixture and helper shared with the exports tests

MANIFEST = Path(__file__).resolve().parents[1] / "mscseg" / "napari.yaml"


def test_manifest_validates_with_npe2_and_is_registered():
    npe2 = pytest.importorskip("npe2")
    script = Path(sys.executable).with_name("npe2")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "npe2"]
    result = subprocess.run(command + ["validate", "--imports", str(MANIFEST)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "mscseg"
    [reader] = manifest.contributions.readers
    assert reader.accepts_directories and reader.command == "mscseg.get_reader"
    assert [e.value for e in entry_points(group="napari.manifest") if e.name == "mscseg"] == ["mscseg:napari.yaml"]


def test_reader_declines_what_it_cannot_open(tmp_path):
    write_png(tmp_path / "image.png", np.zeros((4, 4), np.uint8))
    assert get_reader(str(tmp_path)) is None
    assert get_reader(str(tmp_path / "image.png")) is None
    assert get_reader([str(tmp_path), str(tmp_path)]) is None
    assert get_reader(str(tmp_path / "missing")) is None


def test_predict_folder_layers_hold_the_written_labels(fake_semantic_run, tmp_path):
    write_micrographs(tmp_path / "images")
    out = tmp_path / "out"
    predict.predict_folder(fake_semantic_run, [tmp_path / "images"], out, threshold=0.5)
    reader = get_reader(str(out))
    assert reader is read_predict_folder and get_reader([str(out)]) is read_predict_folder
    layers = reader(str(out))
    assert [(kwargs["name"], kind) for _, kwargs, kind in layers] == [
        ("cells", "image"), ("cells cells", "labels"), ("plain", "image"), ("plain cells", "labels")]
    assert [kwargs["visible"] for _, kwargs, _ in layers] == [True, True, False, False]
    counts = pd.read_csv(out / "counts.csv").set_index("image")
    for data, kwargs, kind in layers:
        if kind != "labels":
            continue
        name = kwargs["name"].removesuffix(" cells")
        written = read_array(out / "labels" / f"{name}.png")
        assert data.dtype == written.dtype and np.array_equal(data, written)
        assert kwargs["metadata"]["counts"]["cell_count"] == counts.loc[name, "cell_count"] == len(np.unique(data)) - 1
    image, kwargs, _ = layers[0]
    assert image.shape == (40, 48) and kwargs["rgb"] is False
    assert kwargs["scale"] == (0.5, 0.5) and layers[1][1]["scale"] == (0.5, 0.5)   # cells.tif: 0.5 µm ImageJ pixels
    assert "scale" not in layers[2][1]                                               # plain.png: no pixel size
    # A moved micrograph leaves its labels layer.
    (tmp_path / "images" / "plain.png").unlink()
    assert [kwargs["name"] for _, kwargs, _ in read_predict_folder(str(out))] == ["cells", "cells cells", "plain cells"]


def test_paint_results_keeps_confident_masks_higher_scores_on_top():
    from torch_instseg.coco import encode_rle

    low, high, faint = np.zeros((3, 10, 10), bool)
    low[1:6, 1:6], high[4:8, 4:8], faint[8:, 8:] = True, True, True
    detections = [{"segmentation": encode_rle(high), "score": 0.9}, {"segmentation": encode_rle(low), "score": 0.6},
                  {"segmentation": encode_rle(faint), "score": 0.2}]
    labels = paint_results(detections, (10, 10))
    assert set(np.unique(labels)) == {0, 1, 2}
    assert np.array_equal(labels == 2, high) and np.array_equal(labels == 1, low & ~high) and not labels[faint].any()


def write_results_folder(root: Path) -> dict[str, np.ndarray]:
    """A results folder with a folder-pairs instance dataset, its split, ground truth and one method's results."""
    from data import Sample
    from torch_instseg.coco import dataset_to_coco, labels_to_annotations, write_coco

    layout = Layout(root)
    truth = {}
    for index, name in enumerate(("a", "b", "c")):
        labels = np.zeros((24, 32), np.int32)
        labels[2:8, 3 + index:9 + index] = 1
        labels[12:20, 14:22] = 2
        truth[name] = labels
        write_png(root / "cells" / "images" / f"{name}.png", (labels > 0).astype(np.uint8) * 150)
        write_png(root / "cells" / "masks" / f"{name}.png", labels.astype(np.uint16))
    layout.config_json.write_text(json.dumps({"settings": {"instance": {"dataset": {
        "path": str(root / "cells"), "format": "folders", "options": {}, "synthetic": None}}}}))
    layout.instance.mkdir(parents=True)
    layout.split_json("instance").write_text(json.dumps({"train": ["a"], "val": ["b", "c"], "seed": 0}))
    gt = dataset_to_coco([Sample(np.zeros((24, 32, 3), np.float32), truth[name], name, "") for name in ("b", "c")])
    write_coco(layout.prediction("gt"), gt)
    results = [{**annotation, "score": 0.8} for image in gt["images"]
               for annotation in labels_to_annotations(truth[image["file_name"]], image["id"])]
    write_coco(layout.prediction("maskrcnn"), results)
    layout.prediction_meta("maskrcnn").write_text("{}")
    return truth


def test_results_folder_layers_are_the_validation_images_truth_and_methods(tmp_path):
    truth = write_results_folder(tmp_path / "run")
    assert get_reader(str(tmp_path / "run")) is read_results_folder
    layers = read_results_folder(str(tmp_path / "run"))
    assert [(kwargs["name"], kind) for _, kwargs, kind in layers] == [
        ("b", "image"), ("b ground truth", "labels"), ("b maskrcnn", "labels"),
        ("c", "image"), ("c ground truth", "labels"), ("c maskrcnn", "labels")]
    for data, kwargs, kind in layers:
        name = kwargs["name"].split()[0]
        if kwargs["name"].endswith("ground truth"):
            assert np.array_equal(data, truth[name])
        elif kind == "labels":
            assert kwargs["metadata"] == {"method": "maskrcnn", "min_score": 0.5, "detections": 2, "shown": 2}
            for label in (1, 2):                                    # the same cells, numbered by score order
                assert len(np.unique(data[truth[name] == label])) == 1 and (data[truth[name] == label] > 0).all()
            assert np.array_equal(data > 0, truth[name] > 0)
        else:
            assert data.shape == (24, 32)
