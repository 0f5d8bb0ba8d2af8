"""The contract between the trainers and mscseg-predict, end to end on what the real commands wrote.

No run folder here is made by hand: ``semseg-train``, ``instseg-train`` and the runner
train tiny models, and ``mscseg-predict`` with default settings meets an image of
another size at the training magnification, with a minimum area from the recorded cells.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.geometry import cell_areas, internal_resize_factor, maskrcnn_training_geometry, training_geometry
from data.imageio import write_png
from data.run_record import read_record

NATIVE = 96
TRAIN_SIZE = 64


@pytest.fixture(scope="module")
def native_96(tmp_path_factory) -> Path:
    """Six sparse synthetic 96 x 96 micrographs with instance labels (folder pairs)."""
    from data.synthetic import write_dataset

    folder = tmp_path_factory.mktemp("native96")
    write_dataset(folder, n_images=6, size=NATIVE, density="sparse", seed=3)
    return folder


@pytest.fixture(scope="module")
def new_image(tmp_path_factory) -> Path:
    """One 150 x 170 micrograph, a size no model here was trained on."""
    from data.synthetic import generate_sample

    folder = tmp_path_factory.mktemp("new_image")
    sample = generate_sample((150, 170), "sparse", seed=11, name="other_size")
    write_png(folder / "other_size.png", (sample.image[..., 0] * 255).astype(np.uint8))
    return folder / "other_size.png"


def _expected_min_area(data: Path, split: Path) -> int:
    """Half the 1st percentile of the training cells' areas, from the label files themselves (no mscseg code)."""
    from PIL import Image

    train = json.loads(split.read_text())["train"]
    areas = np.concatenate([cell_areas(np.asarray(Image.open(data / "masks" / f"{name}.png")).astype(np.int64))
                            for name in train])
    return int(np.floor(0.5 * np.percentile(areas, 1)))


def _predict(run: Path, image: Path, out: Path) -> dict:
    from mscseg.predict import main as predict_main

    assert predict_main(["--model", str(run), "--images", str(image), "--out", str(out)]) == 0
    return json.loads((out / "predict.json").read_text())


def _assert_training_geometry_used(record: dict, scale: float, min_area: int) -> None:
    assert record["scale_source"].startswith("training geometry: ")
    assert record["scale"] == pytest.approx(scale)
    assert record["min_area_px"] == min_area and min_area > 0
    assert "percentile of the training cells' areas" in record["min_area_source"]
    assert record["training_geometry"]["cell_area_px"]["cells"] > 0


@pytest.mark.slow
def test_semseg_train_run_predicts_at_its_training_geometry(native_96, new_image, tmp_path):
    from keras_semseg.train import main as train_main

    run, split = tmp_path / "unet", tmp_path / "split.json"
    assert train_main(["--data", str(native_96), "--split", str(split), "--out", str(run), "--model", "unet",
                       "--image-size", str(TRAIN_SIZE), "--epochs", "1", "--batch-size", "4",
                       "--encoder-weights", "none", "--quiet"]) == 0
    geometry = read_record(run).geometry
    assert (geometry["native_height"], geometry["native_width"], geometry["image_size"]) == (NATIVE, NATIVE, TRAIN_SIZE)
    record = _predict(run, new_image, tmp_path / "out")
    _assert_training_geometry_used(record, TRAIN_SIZE / NATIVE, _expected_min_area(native_96, split))
    assert record["tile_px"] == [NATIVE, NATIVE]          # tiles of the training images' size, each resized to 64
    assert record["size_notes"] and "the training images were 96x96" in record["size_notes"][0]


@pytest.mark.slow
def test_instseg_train_run_predicts_at_its_training_geometry(native_96, new_image, tmp_path, torch_one_thread):
    from torch_instseg.maskrcnn import main as train_main

    run, split = tmp_path / "maskrcnn", tmp_path / "split.json"
    assert train_main(["--data", str(native_96), "--split", str(split), "--out", str(run), "--weights", "none",
                       "--image-size", str(TRAIN_SIZE), "--epochs", "1", "--batch-size", "2", "--device", "cpu",
                       "--detections-per-image", "20", "--quiet"]) == 0
    geometry = read_record(run).geometry
    assert geometry["internal_resize"] == 1.0 and geometry["min_size"] == geometry["max_size"] == TRAIN_SIZE
    record = _predict(run, new_image, tmp_path / "out")
    _assert_training_geometry_used(record, TRAIN_SIZE / NATIVE, _expected_min_area(native_96, split))
    assert "internal factor 1" in record["scale_source"]


@pytest.mark.slow
def test_runner_runs_predict_at_their_training_geometry(tmp_path_factory, new_image, tmp_path):
    from test_mscseg_run import ensure_tiny_run

    tiny = ensure_tiny_run(tmp_path_factory)
    for run in (tiny / "semantic" / "unet", tiny / "instance" / "maskrcnn"):
        geometry = read_record(run).geometry
        assert geometry is not None, f"{run}: no training geometry in run.json"
        assert geometry["scale_y"] == geometry["scale_x"]        # the tiny preset's images are square
        record = _predict(run, new_image, tmp_path / run.name)
        _assert_training_geometry_used(record, geometry["scale_y"], int(np.floor(0.5 * geometry["cell_area_px"]["p1"])))


def test_maskrcnn_geometry_known_answer():
    """100 x 120 images: torchvision's 800/1333 resize is x8 (the shorter side); with image_size 64 it is 64/100, 64/120."""
    from data import Sample, in_memory

    labels = np.zeros((100, 120), np.int32)
    labels[10:20, 10:30] = 1                                     # 200 px
    labels[50:60, 50:55] = 2                                     # 50 px
    samples = [Sample(np.zeros((100, 120, 3), np.float32), labels, name, "") for name in ("a", "b")]
    native = maskrcnn_training_geometry(in_memory(samples), ["a", "b"], None, 800, 1333)
    assert native["scale_y"] == native["scale_x"] == native["internal_resize"] == 8.0
    assert native["image_size"] is None and native["cell_area_px"]["cells"] == 4
    square = maskrcnn_training_geometry(in_memory(samples), ["a", "b"], 64, 64, 64)
    assert square["internal_resize"] == 1.0
    assert (square["scale_y"], square["scale_x"]) == (pytest.approx(0.64), pytest.approx(64 / 120))
    assert internal_resize_factor(100, 2000, 800, 1333) == pytest.approx(1333 / 2000)
    assert training_geometry(in_memory(samples), ["a"], 64)["scale_y"] == pytest.approx(0.64)


def test_run_record_reads_geometry_from_where_trainers_write_it(tmp_path):
    from data.run_record import RunRecord

    geometry = {"native_height": 128, "native_width": 128, "scale_y": 0.5, "scale_x": 0.5}
    record = RunRecord("keras", "unet", {"image_size": 64}, details={"geometry": geometry})
    record.write(tmp_path)
    assert read_record(tmp_path).geometry == geometry
    RunRecord("keras", "unet", {"image_size": 64}).write(tmp_path)
    assert read_record(tmp_path).geometry is None


def test_incomplete_geometry_is_not_used(tmp_path):
    """A record whose geometry lacks a scale (hand-edited, foreign) reads as none: predict falls back to scale 1."""
    from data.run_record import RunRecord

    RunRecord("keras", "unet", {"image_size": 64}, details={"geometry": {"image_size": 64, "scale_y": 0.5}}).write(tmp_path)
    assert read_record(tmp_path).geometry is None
