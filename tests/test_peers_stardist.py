"""The StarDist peer: settings checks, known answers (score source, schedules, crops), a tiny run scored by
the project's evaluator, resume after a stop, the offline message and the missing package."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

import peers
from data.coco_codec import decode_rle
from data.dataset import in_memory
from data.lifecycle import BUDGET_REACHED, FINISHED, RunControl
from data.outputs import OutputExistsError
from data.split import make_split
from data.synthetic import generate
from peers import stardist as sd

pytest.importorskip("stardist")

TINY = dict(n_rays=8, grid=(2, 2), unet_n_depth=2, unet_n_filter_base=8, patch_size=32, epochs=2, steps_per_epoch=2,
            batch_size=2, lr=3e-3, optimize_thresholds=False, seed=0)


@pytest.fixture(scope="module")
def tiny_data():
    samples = generate(n_images=8, size=64, density="sparse", seed=0)
    dataset = in_memory(samples)
    return dataset, make_split(dataset.names, val_fraction=0.25, seed=0)


# ---------------------------------------------------------------- settings (no framework)


def test_default_settings_are_valid_and_record_json_types():
    settings = sd.StardistSettings()
    assert settings.problems() == []
    checked = settings.checked()
    assert checked.grid == (2, 2) and checked.weights == "none"
    assert checked.to_record()["grid"] == [2, 2]
    assert "epochs" not in sd.STARDIST_RESUME_MUST_MATCH and "n_rays" in sd.STARDIST_RESUME_MUST_MATCH
    assert sd.SETTINGS is sd.StardistSettings and sd.NAME == "stardist" and peers.peer_module("stardist") is sd


@pytest.mark.parametrize("field, value, words", [
    ("n_rays", 2, "at least 3"),
    ("grid", 3, "powers of 2"),
    ("grid", (2, 2, 2), "powers of 2"),
    ("patch_size", 100, "multiple of 16"),
    ("patch_size", 8, "at least 16"),
    ("image_size", 10, "at least 32"),
    ("epochs", 0, "at least 1"),
    ("batch_size", 1.5, "whole number"),
    ("lr", -1.0, "positive"),
    ("lr_schedule", "step", "plateau, cosine"),
    ("plateau_factor", 1.0, "between 0 and 1"),
    ("batchnorm_momentum", 0.0, "between 0 and 1"),
    ("max_minutes", 0, "positive or none"),
    ("threshold_images", 0, "at least 1 or none"),
    ("augment", "yes", "true or false"),
    ("weights", 3, "none, 2D_versatile_fluo or a path"),
])
def test_bad_settings_are_refused_with_the_field_named(field, value, words):
    settings = sd.StardistSettings(**{field: value})
    found = dict(settings.problems())
    assert field in found and words in found[field]
    with pytest.raises(peers.PeerError, match=f"stardist.{field}: "):
        settings.checked()


def test_released_weights_need_the_released_network_shape():
    found = dict(sd.StardistSettings(weights="2D_versatile_fluo", n_rays=16, unet_batch_norm=True).problems())
    assert "n_rays 32" in found["weights"] and "unet_batch_norm False" in found["weights"]
    assert sd.StardistSettings(weights="2D_versatile_fluo").problems() == []


# ---------------------------------------------------------------- known answers (numpy)


def test_plateau_halves_the_lr_after_patience_epochs_without_improvement():
    state = sd.OptimizerState(lr=1.0)
    for loss in (5.0, 4.0, 4.0, 4.5):
        sd.plateau_step(state, loss, factor=0.5, patience=2)
    assert state.lr == 0.5 and state.plateau_wait == 0 and state.plateau_best == 4.0
    sd.plateau_step(state, 3.0, factor=0.5, patience=2)
    assert state.lr == 0.5 and state.plateau_best == 3.0


def test_cosine_lr_per_epoch():
    assert sd.cosine_lr(1.0, 1, 4) == 1.0
    assert sd.cosine_lr(1.0, 3, 4) == pytest.approx(0.5)
    assert sd.cosine_lr(1.0, 4, 4) == pytest.approx(0.5 * (1 + math.cos(0.75 * math.pi)))


def test_validation_crops_cover_each_image_once_per_tile():
    image = np.arange(40 * 50, dtype=np.float32).reshape(40, 50)
    crops, labels = sd.validation_crops([image], [image.astype(np.int32)], 32)
    assert len(crops) == 4 and all(c.shape == (32, 32) for c in crops)
    covered = np.zeros(image.shape, bool)
    for crop in crops:
        top, left = np.argwhere(image == crop[0, 0])[0]
        covered[top:top + 32, left:left + 32] = True
    assert covered.all()
    assert sd._starts(64, 64) == [0] and sd._starts(160, 128) == [0, 32]


def test_patch_side_fits_the_smallest_image_and_the_network_blocks():
    settings = sd.StardistSettings(patch_size=256, unet_n_depth=3).checked()
    assert sd.patch_side(settings, [(160, 200), (150, 400)]) == 144
    with pytest.raises(peers.PeerError, match="smaller than one 16 px"):
        sd.patch_side(settings, [(12, 40)])


def test_network_input_is_grey_and_percentile_normalised():
    pytest.importorskip("csbdeep")
    ramp = np.linspace(0, 1, 1001, dtype=np.float32).reshape(1, 1001)
    image = np.stack([ramp, ramp, ramp], axis=-1)
    x = sd.network_input(image)
    assert x.shape == (1, 1001) and x.dtype == np.float32
    assert x[0, 10] == pytest.approx(0.0, abs=1e-5) and x[0, 998] == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------- score source (StarDist's own NMS and painting)


def _circle_model(n_rays: int = 16):
    sd._stardist()
    from stardist.models import Config2D, StarDist2D

    config = Config2D(n_rays=n_rays, grid=(2, 2), unet_n_depth=1, unet_n_filter_base=4, net_conv_after_unet=0)
    with sd._muted(True):
        return StarDist2D(config, name="known_answer", basedir=None)


def test_label_k_has_the_probability_of_details_prob_k_minus_1(monkeypatch):
    """Hand-made maps on StarDist's 2x grid: A (p 0.9, r 6 px), C (0.7, r 6 px) 10 px right of A (small overlap,
    both kept), B (0.6, r 8 px), and D (0.8) 2 px below A, suppressed by NMS."""
    model = _circle_model()
    prob = np.zeros((32, 32), np.float32)
    dist = np.ones((32, 32, 16), np.float32)
    for (gy, gx), p, radius in (((8, 8), 0.9, 6), ((8, 13), 0.7, 6), ((22, 20), 0.6, 8), ((9, 8), 0.8, 6)):
        prob[gy, gx], dist[gy, gx] = p, radius
    monkeypatch.setattr(model.keras_model, "predict", lambda x, **kw: (prob[None, ..., None], dist[None]))
    loaded = sd.LoadedStardist(model, prob_thresh=0.5, nms_thresh=0.4, image_size=None, run_dir=None, weights="")
    image = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)
    labels, scores = sd.predict_labels(loaded, image)
    assert labels.shape == (64, 64) and labels.dtype == np.int32 and scores.dtype == np.float64
    assert sorted(np.round(scores, 6).tolist()) == [0.6, 0.7, 0.9]
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    for (y, x), p in (((16, 16), 0.9), ((16, 28), 0.7), ((44, 40), 0.6), ((16, 21), 0.9)):
        assert scores[labels[y, x] - 1] == pytest.approx(p), (y, x)
    assert labels[0, 0] == 0
    results = peers.labels_to_results(7, labels, scores)
    assert [round(r["score"], 6) for r in results] == [0.9, 0.7, 0.6]
    assert np.array_equal(decode_rle(results[2]["segmentation"]).astype(bool), labels == labels[44, 40])


# ---------------------------------------------------------------- offline, missing package


def test_released_weights_offline_give_one_line_naming_the_file(tmp_path, monkeypatch, tiny_data):
    sd._stardist()
    from csbdeep.models import pretrained

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure: offline")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(pretrained, "get_file", no_network)
    with pytest.raises(peers.PeerError) as caught:
        sd.fetch_released("2D_versatile_fluo")
    message = str(caught.value)
    assert "\n" not in message and "2D_versatile_fluo.zip" in message
    assert str(tmp_path / "keras" / "models" / "StarDist2D" / "2D_versatile_fluo") in message
    dataset, split = tiny_data
    out = tmp_path / "run"
    with pytest.raises(peers.PeerError, match="cannot be downloaded"):
        sd.train(sd.StardistSettings(weights="2D_versatile_fluo"), dataset, split, out)
    assert not out.exists()


def test_missing_package_gives_peer_unavailable(tmp_path, monkeypatch, tiny_data):
    dataset, split = tiny_data
    sd._stardist.cache_clear()
    monkeypatch.setitem(sys.modules, "stardist", None)
    try:
        with pytest.raises(peers.PeerUnavailable, match="needs the Python package 'stardist'"):
            sd.train(sd.StardistSettings(**TINY), dataset, split, tmp_path / "run")
    finally:
        sd._stardist.cache_clear()
    assert not (tmp_path / "run").exists()


def test_missing_weights_file_is_refused_before_writing(tmp_path, tiny_data):
    dataset, split = tiny_data
    with pytest.raises(peers.PeerError, match="weights file not found"):
        sd.train(sd.StardistSettings(**{**TINY, "weights": str(tmp_path / "nope.h5")}), dataset, split, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- a tiny run: COCO results, evaluation, resume


@pytest.mark.slow
def test_tiny_run_writes_coco_results_the_evaluator_scores(tmp_path, tiny_data):
    from data.coco_codec import dataset_to_coco
    from torch_instseg.evaluate import instance_table

    dataset, split = tiny_data
    run_dir = tmp_path / "run"
    record = sd.train(sd.StardistSettings(**{**TINY, "optimize_thresholds": True, "threshold_images": 3}), dataset, split,
                      run_dir, RunControl(quiet=True))
    assert record["trainer"] == "stardist" and record["status"] == FINISHED and record["epochs_done"] == 2
    thresholds = json.loads((run_dir / sd.THRESHOLDS_JSON).read_text())
    assert 0 < thresholds["prob"] < 1 and thresholds["nms"] in sd.NMS_CANDIDATES
    assert record["details"]["thresholds"]["prob"] == thresholds["prob"]
    for name in (sd.CONFIG_JSON, sd.WEIGHTS_BEST, sd.WEIGHTS_LAST, sd.OPTIMIZER_LAST, "history.csv"):
        assert (run_dir / name).is_file(), name
    loaded = sd.load(run_dir, device="cpu")
    assert loaded.prob_thresh == thresholds["prob"] and loaded.weights.endswith(sd.WEIGHTS_BEST)
    gt = dataset_to_coco(dataset.subset(split["val"]))
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    out = sd.predict_to_coco(run_dir, dataset, split["val"], gt_path, tmp_path / "stardist.json", device="cpu")
    meta = json.loads(peers.meta_path(out).read_text())
    assert meta["score_source"] == sd.SCORE_SOURCE and meta["method"] == "stardist" and meta["weights"] == "none"
    table = instance_table(gt_path, {"stardist": out}, max_dets=300, interpolation=11)
    row = table.iloc[0]
    assert row["n_images"] == len(split["val"]) and 0.0 <= row["mAP"] <= 1.0 and row["score_source"] == sd.SCORE_SOURCE
    with pytest.raises(OutputExistsError):
        sd.predict_to_coco(run_dir, dataset, split["val"], gt, out)
    other = tmp_path / "other"
    with pytest.raises(peers.PeerError, match="do not fit a StarDist network"):
        sd.train(sd.StardistSettings(**{**TINY, "n_rays": 16, "weights": str(run_dir)}), dataset, split, other)
    assert not other.exists()


@pytest.mark.slow
def test_resume_after_a_budget_stop_continues_like_an_uninterrupted_run(tmp_path, tiny_data):
    import pandas as pd

    dataset, split = tiny_data
    whole = sd.train(sd.StardistSettings(**TINY), dataset, split, tmp_path / "whole", RunControl(quiet=True))
    stopped = sd.train(sd.StardistSettings(**{**TINY, "max_minutes": 1e-6}), dataset, split, tmp_path / "parts",
                       RunControl(quiet=True))
    assert stopped["status"] == BUDGET_REACHED and stopped["epochs_done"] == 1
    resumed = sd.train(sd.StardistSettings(**TINY), dataset, split, tmp_path / "parts", RunControl(resume=True, quiet=True))
    assert resumed["status"] == FINISHED and resumed["epochs_done"] == 2 == whole["epochs_done"]
    history = pd.read_csv(tmp_path / "parts" / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    with np.load(tmp_path / "parts" / sd.OPTIMIZER_LAST) as parts, np.load(tmp_path / "whole" / sd.OPTIMIZER_LAST) as one:
        assert int(parts["var_0"]) == 2 * TINY["steps_per_epoch"] == int(one["var_0"])
        for key in one.files:
            np.testing.assert_allclose(parts[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)
    reference = pd.read_csv(tmp_path / "whole" / "history.csv")
    np.testing.assert_allclose(history["val_loss"], reference["val_loss"], rtol=1e-4)
