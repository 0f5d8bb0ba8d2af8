"""mscseg.predict: tiling, blending, instance merging, measurements; prediction with the tiny run's models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.imageio import read_array, write_png
from mscseg import predict
from mscseg.errors import RunError
from mscseg.predict import (
    LoadedModel, axis_weights, components, find_images, instance_labels, main, measure_cells, owner_index, relabel,
    semantic_probabilities, tile_starts,
)


def test_tile_starts_cover_with_overlap():
    assert tile_starts(64, 64, 16) == [0]
    assert tile_starts(50, 64, 16) == [0]
    assert tile_starts(150, 64, 16) == [0, 48, 86]
    for length, tile, overlap in ((150, 64, 16), (1024, 128, 32), (65, 64, 0)):
        starts = tile_starts(length, tile, overlap)
        covered = np.zeros(length, bool)
        for start in starts:
            covered[start:start + tile] = True
            assert 0 <= start <= length - tile
        assert covered.all()
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_owner_index_nearest_centre():
    owners = owner_index(150, [0, 48, 86], 64)
    assert owners[0] == 0 and owners[149] == 2
    assert owners[55] == 0 and owners[56] == 1 and owners[98] == 1 and owners[99] == 2  # centres 32, 80, 118
    assert np.all(np.diff(owners) >= 0)


def test_axis_weights_vanish_at_inner_edges_and_cover_everything():
    for length, tile, overlap in ((150, 64, 16), (1024, 256, 64), (65, 64, 0), (128, 64, 0), (64, 64, 16), (40, 64, 16)):
        starts = tile_starts(length, tile, overlap)
        weights = axis_weights(length, starts, tile, overlap)
        total = np.zeros(max(length, tile))
        for start, weight in zip(starts, weights):
            assert weight.shape == (tile,) and weight.min() >= 0 and weight.max() == 1.0
            if start > 0 and overlap > 0:
                assert weight[0] == 0.0 and weight[overlap] == 1.0
            if start + tile < length and overlap > 0:
                assert weight[-1] == 0.0
            total[start:start + tile] += weight
        assert (total[:length] > 0).all(), (length, tile, overlap)
    first, last = axis_weights(150, [0, 48, 86], 64, 16)[::2]
    assert first[0] == 1.0 and last[-1] == 1.0          # image borders count fully


def _box_filter_model(images, size, batch_size=8):
    """A 'network' with edge effects: a 3 x 3 mean of channel 0 with zero padding, so a tile's border pixels are wrong."""
    outputs = []
    for image in images:
        padded = np.pad(image[..., 0].astype(np.float64), 1)
        height, width = image.shape[:2]
        outputs.append(sum(padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)) / 9.0)
    return outputs


def test_tiled_map_equals_untiled_for_a_smooth_field(monkeypatch):
    import keras_semseg.predict as keras_predict

    monkeypatch.setattr(keras_predict, "predict_probs", lambda model, images, size, batch_size=8: _box_filter_model(images, size))
    yy, xx = np.mgrid[0:203, 0:257]
    field = 0.5 + 0.25 * np.sin(yy / 23.0) * np.cos(xx / 31.0) + 0.2 * (xx / 257.0)
    image = np.repeat(field[..., None], 3, axis=2).astype(np.float32)
    loaded = LoadedModel("semantic", "box", None, 64, Path("."))
    whole = semantic_probabilities(loaded, image, (203, 257), 0)
    np.testing.assert_allclose(whole, _box_filter_model([image], None)[0], atol=1e-6)
    for tile, overlap in ((64, 16), ((64, 96), (8, 24)), (100, 2)):
        tiled = semantic_probabilities(loaded, image, tile, overlap)
        assert tiled.shape == whole.shape
        np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)
        np.testing.assert_allclose(tiled[-1], whole[-1], atol=1e-5, rtol=0)
        np.testing.assert_allclose(tiled[:, -1], whole[:, -1], atol=1e-5, rtol=0)
    abutting = semantic_probabilities(loaded, image, 64, 0)   # no overlap: seams stay, but every pixel is covered
    assert np.isfinite(abutting).all() and abutting[-1].min() > 0.2 and abutting[:, -1].min() > 0.2


def test_measure_cells_known_answers():
    labels = np.zeros((40, 60), np.int32)
    labels[10:14, 5:45] = 1     # 4 x 40 bar
    labels[25:35, 20:30] = 2    # 10 x 10 square
    cells = measure_cells(labels, "img").set_index("cell")
    assert list(cells.columns[:1]) == ["image"]
    assert cells.loc[1, "area_px"] == 160 and cells.loc[2, "area_px"] == 100
    assert cells.loc[1, "elongation"] == pytest.approx(40 / 4, rel=0.05)
    assert cells.loc[2, "elongation"] == pytest.approx(1.0, abs=1e-6)
    assert (cells.loc[2, "centroid_x"], cells.loc[2, "centroid_y"]) == (24.5, 29.5)
    assert 30 < cells.loc[2, "perimeter_px"] <= 40


def test_components_and_relabel():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True
    mask[3, 3] = True              # touches diagonally: same 8-connected cell
    mask[7:9, 7:9] = True
    mask[0, 9] = True              # 1 px speck
    labels = components(mask)
    assert labels.max() == 3
    assert components(mask, min_area=2).max() == 2
    renumbered, scores = relabel(np.array([[0, 5], [9, 9]]), {5: 0.2, 9: 0.8})
    assert renumbered.tolist() == [[0, 1], [2, 2]] and scores == {1: 0.2, 2: 0.8}


def test_find_images_names_collisions_by_parent(tmp_path):
    for folder in ("set1", "set2"):
        write_png(tmp_path / folder / "raw.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "set1" / "other.png", np.zeros((4, 4), np.uint8))
    named = find_images([tmp_path], recursive=True)
    assert list(named) == ["other", "set1_raw", "set2_raw"]
    with pytest.raises(RunError, match="add --recursive"):
        find_images([tmp_path])
    with pytest.raises(RunError, match="no such file"):
        find_images([tmp_path / "absent"])


def test_tiled_blending_reproduces_an_identity_model(monkeypatch):
    """A model that returns its input: any tiling must give the image back exactly."""
    import keras_semseg.predict as keras_predict

    monkeypatch.setattr(keras_predict, "predict_probs", lambda model, images, size, batch_size=8: [i[..., 0].copy() for i in images])
    rng = np.random.default_rng(0)
    image = np.repeat(rng.random((150, 170, 1), dtype=np.float32), 3, axis=2)
    loaded = LoadedModel("semantic", "identity", None, 64, Path("."))
    for tile, overlap in ((64, 16), (64, 0), (256, 16)):
        np.testing.assert_allclose(semantic_probabilities(loaded, image, tile, overlap), image[..., 0], atol=1e-6)


def test_instances_are_merged_once_across_tiles(monkeypatch):
    """A 'detector' that returns connected components of bright pixels: each cell is found once."""
    import torch_instseg.maskrcnn as maskrcnn

    def detector(model, images, score_threshold=0.05, device=None, image_size=None):
        out = []
        for image in images:
            labels = components(image[..., 0] > 0.5)
            masks = np.stack([labels == i for i in range(1, labels.max() + 1)]) if labels.max() else np.zeros((0,) + labels.shape, bool)
            out.append({"masks": masks, "scores": np.full(len(masks), 0.9, np.float32)})
        return out

    monkeypatch.setattr(maskrcnn, "predict_instances", detector)
    image = np.zeros((150, 170, 3), np.float32)
    yy, xx = np.mgrid[0:150, 0:170]
    centres = [(10, 10), (40, 60), (47, 47), (80, 100), (120, 160), (100, 20), (70, 140)]
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 1.0
    loaded = LoadedModel("instance", "maskrcnn", None, 64, Path("."))
    labels, scores = instance_labels(loaded, image, 64, 16, threshold=0.5)
    assert labels.max() == len(centres) and len(scores) == len(centres)
    np.testing.assert_array_equal(labels > 0, image[..., 0] > 0.5)


# ---------------------------------------------------------------- with the tiny run's trained models

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from test_mscseg_run import ensure_tiny_run

    return ensure_tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def large_images(tmp_path_factory) -> Path:
    """Two micrographs larger than the tiny run's 64 px training size (one 16-bit TIFF)."""
    import tifffile

    from data.synthetic import generate_sample

    folder = tmp_path_factory.mktemp("new_images")
    first = generate_sample((150, 170), "sparse", seed=5, name="big")
    write_png(folder / "big.png", (first.image[..., 0] * 255).astype(np.uint8))
    second = generate_sample((96, 80), "sparse", seed=6, name="small16")
    tifffile.imwrite(folder / "small16.tif", (second.image[..., 0] * 60000).astype(np.uint16))
    return folder


def _check_outputs(out: Path, names: list[str]) -> pd.DataFrame:
    counts = pd.read_csv(out / "counts.csv")
    assert list(counts["image"]) == names
    for row in counts.itertuples():
        mask = read_array(out / "masks" / f"{row.image}.png")
        labels = read_array(out / "labels" / f"{row.image}.png")
        assert mask.shape == labels.shape == (row.height, row.width)
        assert set(np.unique(mask)) <= {0, 255} and labels.dtype == np.uint16
        assert row.cell_count == len(np.unique(labels[labels > 0]))
        assert row.confluence == pytest.approx((mask > 0).mean())
        assert len(pd.read_csv(out / "cells" / f"{row.image}.csv")) == row.cell_count
        assert read_array(out / "overlays" / f"{row.image}.png").shape == (row.height, row.width, 3)
    return counts


@pytest.mark.slow
def test_predict_semantic_run_on_larger_images(tiny_run, large_images, tmp_path, capsys):
    out = tmp_path / "unet"
    assert main(["--model", str(tiny_run / "semantic" / "unet"), "--images", str(large_images), "--out", str(out)]) == 0
    counts = _check_outputs(out, ["big", "small16"])
    record = json.loads((out / "predict.json").read_text())
    table1 = pd.read_csv(tiny_run / "semantic" / "sweep" / "table1.csv").set_index("model")
    assert record["threshold"] == pytest.approx(table1.loc["unet", "threshold"])
    assert "Dice-optimal" in record["threshold_source"] and record["tile"] == 64 and record["overlap"] == 16
    assert set(counts["kind"]) == {"semantic"}
    assert main(["--model", str(tiny_run / "semantic" / "unet"), "--images", str(large_images), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    scaled = tmp_path / "unet_half"
    assert main(["--model", str(tiny_run / "semantic" / "unet"), "--images", str(large_images / "big.png"),
                 "--out", str(scaled), "--scale", "0.5", "--threshold", "0.5"]) == 0
    _check_outputs(scaled, ["big"])
    assert json.loads((scaled / "predict.json").read_text())["scale"] == 0.5


@pytest.mark.slow
def test_predict_maskrcnn_run_with_tiles(tiny_run, large_images, tmp_path):
    out = tmp_path / "maskrcnn"
    table = predict.predict_folder(tiny_run / "instance" / "maskrcnn", [large_images / "small16.tif"], out,
                                   threshold=0.0, tile=64, overlap=16)
    assert list(table["kind"]) == ["instance"]
    _check_outputs(out, ["small16"])
    record = json.loads((out / "predict.json").read_text())
    assert record["tile"] == 64 and record["tile_handling"] == "run at the tile's own size"
    cells = pd.read_csv(out / "cells" / "small16.csv")
    assert cells["score"].between(0, 1).all()


def test_resizing_round_trip():
    image = np.zeros((40, 60, 3), np.float32)
    image[10:30, 20:40] = 1.0
    half = predict.resize_image(image, 0.5)
    assert half.shape == (20, 30, 3)
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 10:20] = 7
    back = predict.resize_back(labels, (40, 60), labels=True)
    assert back.shape == (40, 60) and set(np.unique(back)) == {0, 7} and (back == 7).sum() == 400


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--images", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    write_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    assert main(["--model", str(tmp_path), "--images", str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]) == 2
    assert "run.json missing" in capsys.readouterr().err


GEOMETRY = {"resize": "whole", "image_size": 64, "native_height": 100, "native_width": 120, "native_sizes": {"120x100": 3},
            "scale_y": 0.64, "scale_x": 64 / 120, "cell_area_px": {"cells": 30, "p1": 90.0, "p5": 120.0, "p10": 150.0, "p50": 400.0}}


@pytest.fixture
def fake_semantic_run(monkeypatch, tmp_path):
    """A semantic 'run' trained on 120 x 100 images resized to 64, whose network says p = channel 0; tile shapes recorded."""
    import keras_semseg.predict as keras_predict

    seen: list[tuple[int, int]] = []

    def network(model, images, size, batch_size=8):
        seen.extend(image.shape[:2] for image in images)
        return [image[..., 0].astype(np.float64) for image in images]

    monkeypatch.setattr(keras_predict, "predict_probs", network)
    loaded = LoadedModel("semantic", "unet", None, 64, tmp_path / "run", dict(GEOMETRY))
    monkeypatch.setattr(predict, "load_model", lambda run_dir, which="best", device=None: loaded)
    return seen


def _disks(height: int, width: int, radius: float, centres) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width), np.uint8)
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 255
    return image


def test_predict_uses_training_geometry_and_minimum_area(fake_semantic_run, tmp_path, capsys):
    write_png(tmp_path / "images" / "same.png", _disks(100, 120, 8, [(30, 30), (70, 90)]) | _disks(100, 120, 2, [(80, 20)]))
    write_png(tmp_path / "images" / "double.png", _disks(200, 240, 8, [(50, 50), (150, 200)]))
    out = tmp_path / "out"
    table = predict.predict_folder(tmp_path / "run", [tmp_path / "images"], out, quiet=False, coco=tmp_path / "pred.json")
    printed = capsys.readouterr().out
    # The training-size image is resized whole (one 100 x 120 tile); the 240 x 200 one is cut into tiles of that size.
    assert set(fake_semantic_run) == {(100, 120)}
    counts = table.set_index("image")
    assert counts.loc["same", "tiles"] == 1 and counts.loc["double", "tiles"] > 1
    # min area: half of p1 (90 px) at the training magnification: 45 px; the radius-2 speck (13 px) goes.
    assert (counts["min_area_px"] == 45).all()
    assert counts.loc["same", "cell_count"] == 2 and counts.loc["double", "cell_count"] == 2
    record = json.loads((out / "predict.json").read_text())
    assert record["min_area_px"] == 45 and "percentile" in record["min_area_source"]
    assert record["scale"] == [0.64, 64 / 120] and "training geometry" in record["scale_source"]
    notes = [line for line in printed.splitlines() if line.startswith("note:")]
    assert notes == ["note: double is 240x200 px, the training images were 120x100; shown to the model at the training "
                     f"magnification in {counts.loc['double', 'tiles']} tile(s)"]
    assert record["size_notes"] == notes
    assert pd.read_csv(out / "counts.csv")["min_area_px"].tolist() == [45, 45]
    # --scale 0.32 shows images at about half the training magnification (tiles of 200 x 200 image pixels): a cell
    # covers the same model pixels, so the minimum area in image pixels grows by 0.64 * (64 / 120) / 0.32 ** 2 = 10/3.
    fake_semantic_run.clear()
    predict.predict_folder(tmp_path / "run", [tmp_path / "images" / "same.png"], tmp_path / "scaled", scale=0.32)
    assert set(fake_semantic_run) == {(200, 200)}
    assert json.loads((tmp_path / "scaled" / "predict.json").read_text())["min_area_px"] in (149, 150)
    # The COCO results score against COCO ground truth made from the same disks.
    from data import in_memory, Sample
    from data.imageio import mask_to_labels
    from torch_instseg.coco import dataset_to_coco
    from torch_instseg.evaluate import evaluate

    truth = [Sample(np.zeros((100, 120, 3), np.float32), mask_to_labels(_disks(100, 120, 8, [(30, 30), (70, 90)])), "same", ""),
             Sample(np.zeros((200, 240, 3), np.float32), mask_to_labels(_disks(200, 240, 8, [(50, 50), (150, 200)])), "double", "")]
    gt = dataset_to_coco(sorted(in_memory(truth), key=lambda sample: sample.name))
    assert evaluate(gt, tmp_path / "pred.json", interpolation=101)["mAP"] == pytest.approx(1.0)


def test_recursive_skips_annotation_folders(tmp_path, capsys):
    for sequence in ("01", "02"):
        write_png(tmp_path / "ctc" / sequence / "t000.png", np.zeros((4, 4), np.uint8))
        write_png(tmp_path / "ctc" / f"{sequence}_GT" / "SEG" / "man_seg000.png", np.zeros((4, 4), np.uint8))
        write_png(tmp_path / "ctc" / f"{sequence}_GT" / "TRA" / "man_track000.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "ctc" / "masks" / "cells.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "ctc" / "set1" / "instances_ids.png", np.zeros((4, 4), np.uint8))
    skipped: list[Path] = []
    named = find_images([tmp_path / "ctc"], recursive=True, skipped=skipped)
    assert list(named) == ["01_t000", "02_t000"] and len(skipped) == 6
    assert predict.skipped_note(skipped).startswith("note: skipped 6 annotation file(s)")
    assert list(find_images([tmp_path / "ctc" / "01_GT" / "SEG" / "man_seg000.png"])) == ["man_seg000"]


def test_instance_run_writes_coco_results_with_ground_truth_ids(monkeypatch, tmp_path):
    """A 'Mask R-CNN' that finds bright disks: --coco results carry the ground truth's image ids and score 1.0."""
    import torch_instseg.maskrcnn as maskrcnn
    from torch_instseg.coco import dataset_to_coco, write_coco
    from torch_instseg.evaluate import evaluate

    from data import Sample
    from data.imageio import mask_to_labels

    def detector(model, images, score_threshold=0.05, device=None, image_size=None):
        out = []
        for image in images:
            labels = components(image[..., 0] > 0.5)
            masks = np.stack([labels == i for i in range(1, labels.max() + 1)]) if labels.max() else np.zeros((0,) + labels.shape, bool)
            out.append({"masks": masks, "scores": np.linspace(0.9, 0.6, len(masks)).astype(np.float32)})
        return out

    monkeypatch.setattr(maskrcnn, "predict_instances", detector)
    monkeypatch.setattr(predict, "load_model", lambda run_dir, which="best", device=None:
                        LoadedModel("instance", "maskrcnn", None, None, tmp_path / "run"))
    disks = {"b": _disks(90, 100, 6, [(20, 20), (60, 70)]), "a": _disks(90, 100, 5, [(45, 50)])}
    for name, mask in disks.items():
        write_png(tmp_path / "images" / name / "raw.png", mask)
    gt = dataset_to_coco([Sample(np.zeros((90, 100, 3), np.float32), mask_to_labels(disks[name]), name, "") for name in ("b", "a")])
    write_coco(tmp_path / "gt.json", gt)
    table = predict.predict_folder(tmp_path / "run", [tmp_path / "images"], tmp_path / "out", recursive=True,
                                   coco=tmp_path / "pred.json", coco_gt=tmp_path / "gt.json")
    assert table["cell_count"].tolist() == [1, 2] and (table["min_area_px"] == 0).all()
    results = json.loads((tmp_path / "pred.json").read_text())
    assert sorted({r["image_id"] for r in results}) == [1, 2] and len(results) == 3
    assert all(0.6 <= r["score"] <= 0.9 for r in results)
    for interpolation in (11, 101):
        assert evaluate(tmp_path / "gt.json", tmp_path / "pred.json", interpolation=interpolation)["mAP"] == pytest.approx(1.0)
    write_coco(tmp_path / "only_b.json", {**gt, "images": gt["images"][:1], "annotations": []})
    with pytest.raises(RunError, match="no image with file_name 'raw'"):
        predict.predict_folder(tmp_path / "run", [tmp_path / "images" / "a" / "raw.png"], tmp_path / "o2",
                               coco=tmp_path / "p2.json", coco_gt=tmp_path / "only_b.json")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "p2.json").exists()
