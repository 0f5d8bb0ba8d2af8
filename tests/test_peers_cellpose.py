"""The Cellpose peer: settings, the score's known answers, offline weights, a tiny training run, resume, COCO results."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import peers
from data.lifecycle import RunControl, RunFolderError
from peers import PeerError, PeerUnavailable
from peers import cellpose as cp


# ---------------------------------------------------------------- settings (no framework)

def test_default_settings_have_no_problems():
    assert cp.CellposeSettings().problems() == []
    assert cp.SETTINGS is cp.CellposeSettings
    assert "epochs" not in cp.CELLPOSE_RESUME_MUST_MATCH and "bsize" in cp.CELLPOSE_RESUME_MUST_MATCH


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("batch_size", 1.5), ("lr", -1.0), ("weight_decay", -0.1), ("optimizer", "adam"), ("bsize", 50),
    ("bsize", 16), ("diam_mean", 2.0), ("diameter", 0), ("scale_range", 2.5), ("flow_threshold", -0.1),
    ("cellprob_threshold", math.nan), ("min_size", -1), ("min_train_masks", -2), ("seed", 0.5), ("max_minutes", 0),
    ("deterministic", "yes"), ("weights", "cyto9"), ("weights", 3),
])
def test_bad_settings_are_refused(field, value):
    settings = cp.CellposeSettings(**{field: value})
    assert [name for name, _ in settings.problems()] == [field]
    with pytest.raises(PeerError, match=f"cellpose.{field}"):
        settings.checked()


def test_weights_are_normalised(tmp_path):
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(b"x")
    assert cp.CellposeSettings(weights=None).checked().weights == "none"
    assert cp.CellposeSettings(weights="None").checked().weights == "none"
    assert cp.CellposeSettings(weights="cyto3").checked().weights == "cyto3"
    assert cp.CellposeSettings(weights=str(model_file)).checked().weights == str(model_file)


def test_learning_rate_schedule_is_cellposes():
    short = cp.learning_rates(0.009, 12)
    assert np.allclose(short, [0, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.009, 0.009])
    long = cp.learning_rates(0.01, 120)
    assert long.size == 120 and long[69] == pytest.approx(0.01)
    assert long[70:75] == pytest.approx([0.005] * 5) and long[-1] == pytest.approx(0.01 / 2 ** 10)


# ---------------------------------------------------------------- the score (numpy known answers)

def test_score_known_answer():
    labels = np.zeros((4, 6), np.int32)
    labels[:, :2] = 1
    labels[:2, 3:] = 2
    labels[3, 5] = 3
    logits = np.zeros((4, 6))
    logits[:2, :2] = math.log(3.0)  # sigmoid 0.75 on half of mask 1, 0.5 on the other half
    logits[:2, 3:] = -math.log(3.0)  # sigmoid 0.25 on mask 2
    logits[3, 5] = 50.0
    mask_flows = np.zeros((2, 4, 6))
    flows = np.zeros((2, 4, 6))
    flows[0][labels == 1] = 5 * 0.3  # squared error 0.09 on every pixel of mask 1
    flows[1][labels == 2] = 5 * 2.0  # error 4: quality clipped to 0
    mask_flows[0][labels == 3] = 0.5  # error 0.25
    assert cp.mean_probability(logits, labels) == pytest.approx([0.625, 0.25, 1.0])
    assert cp.flow_errors(flows, labels, mask_flows) == pytest.approx([0.09, 4.0, 0.25])
    assert cp.detection_scores(logits, labels) == pytest.approx([0.625, 0.25, 1.0])
    assert cp.probability_quantile(logits, labels, 0.0) == pytest.approx([0.5, 0.25, 1.0])
    candidates = cp.score_candidates(logits, flows, labels, mask_flows)
    assert candidates["mean_probability"] == pytest.approx([0.625, 0.25, 1.0])
    assert candidates["probability_x_flow"] == pytest.approx([0.625 * 0.91, 0.0, 0.75])
    assert cp.detection_scores(logits, np.zeros((4, 6), np.int32)).shape == (0,)


def test_flow_error_matches_cellpose_metrics():
    pytest.importorskip("cellpose")
    import torch
    from cellpose import metrics

    labels = np.zeros((30, 30), np.int32)
    labels[2:12, 3:15] = 1
    labels[15:28, 10:24] = 2
    flows = np.random.default_rng(0).normal(size=(2, 30, 30)).astype(np.float32) * 3
    theirs, _ = metrics.flow_error(labels, flows, device=torch.device("cpu"))
    assert cp.flow_errors(flows, labels, cp.mask_flows(labels)) == pytest.approx(theirs, rel=1e-5)


# ---------------------------------------------------------------- missing package, offline weights

def test_missing_package_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(peers.PACKAGES, "cellpose", "cellpose_not_installed_here")
    with pytest.raises(PeerUnavailable, match="cellpose_not_installed_here"):
        cp.train(cp.CellposeSettings(), None, {"train": ["a"], "val": []}, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_released_weights_offline_name_the_file(monkeypatch, tmp_path, synthetic_folder):
    pytest.importorskip("cellpose")
    import data

    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "models"))

    def no_network(url, destination):
        raise OSError("offline")

    monkeypatch.setattr(cp, "_download", no_network)
    dataset = data.read_dataset(synthetic_folder)
    with pytest.raises(PeerError) as caught:
        cp.train(cp.CellposeSettings(weights="cyto3"), dataset, {"train": dataset.names[:2], "val": []}, tmp_path / "run")
    message = str(caught.value)
    assert "\n" not in message and "cyto3" in message and str(tmp_path / "models") in message
    assert "https://www.cellpose.org/models/cyto3" in message
    assert not (tmp_path / "run" / "run.json").exists() and not (tmp_path / "models" / "cyto3").exists()


# ---------------------------------------------------------------- training, resume, prediction

TINY = {"epochs": 2, "batch_size": 4, "bsize": 32, "diam_mean": 15.0, "lr": 0.002, "min_size": 5,
        "cellprob_threshold": -4.0, "flow_threshold": 0.0}
"""A few steps on 64 px images; the low thresholds make an untrained network still return masks."""


@pytest.fixture(scope="module")
def tiny_runs(synthetic_folder, tmp_path_factory, torch_one_thread):
    """A 2-epoch run, and the same run stopped after epoch 1 and resumed to 2."""
    pytest.importorskip("cellpose")
    import data
    from data.split import make_split

    dataset = data.read_dataset(synthetic_folder)
    split = make_split(dataset.names, val_fraction=0.25, seed=0)
    root = tmp_path_factory.mktemp("cellpose")
    whole = cp.train(cp.CellposeSettings(**TINY), dataset, split, root / "whole", RunControl(quiet=True), device="cpu")
    cp.train(cp.CellposeSettings(**{**TINY, "epochs": 1}), dataset, split, root / "resumed", RunControl(quiet=True), device="cpu")
    resumed = cp.train(cp.CellposeSettings(**TINY), dataset, split, root / "resumed", RunControl(resume=True, quiet=True),
                       device="cpu")
    return dataset, split, root, whole, resumed


def test_training_writes_a_run_and_a_cellpose_model(tiny_runs):
    import torch
    from cellpose import models

    dataset, split, root, whole, _ = tiny_runs
    assert whole["status"] == "finished" and whole["epochs_done"] == 2 and whole["trainer"] == "cellpose"
    details = whole["details"]
    assert details["n_train"] == len(split["train"]) and details["peer_versions"]["cellpose"] == "3.1.1.3"
    diameter = details["diameter"]["diameter_px"]
    assert 5 <= diameter <= 64 and details["diameter"]["diam_mean_px"] == 15.0
    assert details["geometry"]["scale_y"] == pytest.approx(15.0 / diameter)
    history = pd.read_csv(root / "whole" / "history.csv")
    assert list(history["epoch"]) == [1, 2] and np.isfinite(history["train_loss"]).all() and np.isfinite(history["val_loss"]).all()
    assert list(history["lr"]) == pytest.approx([0.0, 0.002 / 9])
    model = models.CellposeModel(gpu=False, device=torch.device("cpu"), pretrained_model=str(root / "whole" / "best.pt"))
    assert model.diam_mean == pytest.approx(15.0) and model.diam_labels == pytest.approx(diameter, rel=1e-6)


def test_resume_continues_where_it_stopped(tiny_runs):
    _, _, root, whole, resumed = tiny_runs
    assert resumed["status"] == "finished" and resumed["epochs_done"] == 2
    straight = pd.read_csv(root / "whole" / "history.csv")
    again = pd.read_csv(root / "resumed" / "history.csv")
    assert list(again["epoch"]) == [1, 2]
    assert again["train_loss"].to_numpy() == pytest.approx(straight["train_loss"].to_numpy(), rel=1e-4)
    assert again["val_loss"].to_numpy() == pytest.approx(straight["val_loss"].to_numpy(), rel=1e-4)


def test_a_finished_run_is_not_overwritten(tiny_runs):
    dataset, split, root, _, _ = tiny_runs
    with pytest.raises(RunFolderError, match="finished"):
        cp.train(cp.CellposeSettings(**TINY), dataset, split, root / "whole", RunControl(quiet=True), device="cpu")
    with pytest.raises(RunFolderError, match="bsize"):
        cp.train(cp.CellposeSettings(**{**TINY, "bsize": 48, "epochs": 3}), dataset, split, root / "whole",
                 RunControl(resume=True, quiet=True), device="cpu")


def test_predict_to_coco_is_scored_by_the_evaluator(tiny_runs, tmp_path):
    from data.coco_codec import dataset_to_coco
    from torch_instseg.evaluate import evaluate_all

    dataset, split, root, _, _ = tiny_runs
    gt = dataset_to_coco(dataset.subset(split["val"]))
    out = cp.predict_to_coco(root / "whole", dataset, split["val"], gt, tmp_path / "cellpose.json", device="cpu")
    results = json.loads(out.read_text())
    meta = json.loads((tmp_path / "cellpose.meta.json").read_text())
    assert meta["method"] == "cellpose" and meta["score_source"] == cp.SCORE_SOURCE and meta["versions"]["cellpose"] == "3.1.1.3"
    assert meta["weights"].startswith("none") and meta["flow_threshold"] == 0.0
    assert all(0.0 <= r["score"] <= 1.0 for r in results)
    summary = evaluate_all(gt, out, interpolation=11).summary
    assert summary["n_images"] == len(split["val"]) and summary["n_pred"] == len(results)
    with pytest.raises(peers.MscsegError, match="already exists"):
        cp.predict_to_coco(root / "whole", dataset, split["val"], gt, out, device="cpu")


def test_perfect_cellpose_outputs_give_map_1(tiny_runs, tmp_path, monkeypatch):
    """Cellpose's outputs replaced by the ground truth's (labels, logits +-8, flows from the labels): every cell found,
    scored sigmoid(8), written under the right image ids."""
    from data.coco_codec import dataset_to_coco
    from torch_instseg.evaluate import evaluate_all

    dataset, split, root, _, _ = tiny_runs
    samples = list(dataset.subset(split["val"]))
    truth = {sample.image.tobytes(): sample.labels.astype(np.int32) for sample in samples}

    def perfect(model, image):
        labels = truth[np.asarray(image, np.float32).tobytes()]
        return labels, np.where(labels > 0, 8.0, -8.0), 5.0 * cp.mask_flows(labels)

    monkeypatch.setattr(cp, "cellpose_outputs", perfect)
    gt = dataset_to_coco(samples)
    out = cp.predict_to_coco(root / "whole", dataset, split["val"], gt, tmp_path / "perfect.json", device="cpu")
    results = json.loads(out.read_text())
    assert len(results) == sum(int(sample.labels.max()) for sample in samples) > 0
    assert [r["score"] for r in results] == pytest.approx([1 / (1 + math.exp(-8.0))] * len(results), abs=1e-9)
    summary = evaluate_all(gt, out, interpolation=11).summary
    assert summary["mAP"] == pytest.approx(1.0) and summary["AP50"] == pytest.approx(1.0)


def test_predict_labels_scores_every_label(tiny_runs):
    dataset, split, root, _, _ = tiny_runs
    model = cp.load(root / "whole", "cpu")
    assert model.flow_threshold == 0.0 and model.cellprob_threshold == -4.0 and model.min_size == 5
    labels, scores = cp.predict_labels(model, dataset.get(split["val"][0]).image)
    assert labels.dtype == np.int32 and labels.shape == (64, 64)
    assert set(np.unique(labels)) == set(range(int(labels.max()) + 1)) and scores.shape == (int(labels.max()),)
