"""Trainer: a tiny synthetic run, its files, resume, refusals, NaN, predictions, the CLI."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("tensorflow")

from data import in_memory, make_split  # noqa: E402
from data.lifecycle import RunFolderError  # noqa: E402
from data.synthetic import generate  # noqa: E402
from keras_semseg import SemsegError, registry  # noqa: E402
from keras_semseg.train import HISTORY_COLUMNS, main, train_model  # noqa: E402

ORIGINAL_SIZE = 64
IMAGE_SIZE = 32
TINY = {"base_filters": 8}
SETTINGS = dict(image_size=IMAGE_SIZE, epochs=4, batch_size=4, encoder_weights=None, augment=False, quiet=True,
                model_options=TINY, seed=0)


@pytest.fixture(scope="module")
def synthetic():
    dataset = in_memory(generate(12, ORIGINAL_SIZE, "sparse", seed=4))
    return dataset, make_split(dataset.names, 0.25, seed=0)


@pytest.fixture(scope="module")
def finished_run(synthetic, tmp_path_factory):
    dataset, split = synthetic
    out_dir = tmp_path_factory.mktemp("runs") / "segnet"
    record = train_model("segnet", dataset, split, out_dir, split_path="split.json", **SETTINGS)
    return out_dir, record


@pytest.mark.slow
def test_tiny_run_lowers_the_loss_and_writes_its_files(finished_run, synthetic):
    out_dir, record = finished_run
    dataset, split = synthetic
    history = pd.read_csv(out_dir / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert (history["time_s"] > 0).all() and history["pixel_accuracy"].between(0, 1).all()
    assert record["best_epoch"] == int(history.loc[history["val_loss"].idxmin(), "epoch"])
    saved = json.loads((out_dir / "run.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["status"] == "finished" and saved["epochs_done"] == 4
    assert saved["trainer"] == "keras" and saved["model"] == "segnet" and saved["settings"]["image_size"] == IMAGE_SIZE
    assert saved["split"]["path"] == "split.json"
    assert saved["split"]["train"] == split["train"] and saved["split"]["val"] == split["val"]
    assert saved["epochs"] == 4 and saved["epoch_time_s_mean"] > 0
    geometry = saved["details"]["geometry"]
    assert (geometry["native_height"], geometry["native_width"], geometry["image_size"]) == (ORIGINAL_SIZE, ORIGINAL_SIZE, IMAGE_SIZE)
    assert geometry["scale_y"] == geometry["scale_x"] == IMAGE_SIZE / ORIGINAL_SIZE
    n_cells = sum(int(np.unique(dataset.get(name).labels).size) - 1 for name in split["train"])
    assert geometry["cell_area_px"]["cells"] == n_cells and geometry["cell_area_px"]["p1"] > 0
    assert saved["wall_time_s"] > 0 and "tensorflow-cpu" in saved["versions"] or "tensorflow" in saved["versions"]
    for name in ("best.weights.h5", "last.weights.h5", "last.optimizer.npz"):
        assert (out_dir / name).is_file()
    assert not list(out_dir.glob("*.partial*"))


@pytest.mark.slow
def test_probs_written_for_every_validation_image_at_original_size(finished_run, synthetic):
    out_dir, _ = finished_run
    dataset, split = synthetic
    assert sorted(p.stem for p in (out_dir / "probs").glob("*.npy")) == sorted(split["val"])
    for name in split["val"]:
        probs = np.load(out_dir / "probs" / f"{name}.npy", allow_pickle=False)
        assert probs.dtype == np.float16 and probs.shape == (ORIGINAL_SIZE, ORIGINAL_SIZE)
        assert 0.0 <= probs.min() and probs.max() <= 1.0


@pytest.mark.slow
def test_load_run_and_predict_probs_match_the_saved_maps(finished_run, synthetic):
    from keras_semseg.predict import load_run, predict_probs

    out_dir, _ = finished_run
    dataset, split = synthetic
    model, settings = load_run(out_dir, "best")
    assert settings["model"] == "segnet"
    name = split["val"][0]
    (probs,) = predict_probs(model, [dataset.get(name).image], settings["image_size"])
    assert probs.dtype == np.float32 and probs.shape == (ORIGINAL_SIZE, ORIGINAL_SIZE)
    np.testing.assert_allclose(probs, np.load(out_dir / "probs" / f"{name}.npy").astype(np.float32), atol=2e-3)
    (odd,) = predict_probs(model, [dataset.get(name).image[:50, :40]], settings["image_size"])
    assert odd.shape == (50, 40)
    with pytest.raises(SemsegError, match="multiple of 32"):
        predict_probs(model, [dataset.get(name).image], 40)


@pytest.mark.slow
def test_finished_run_is_never_overwritten_without_overwrite(finished_run, synthetic):
    out_dir, _ = finished_run
    dataset, split = synthetic
    before = {path.name: path.stat().st_mtime_ns for path in out_dir.iterdir()}
    with pytest.raises(RunFolderError, match=r"holds a finished segnet run \(4 epochs\); pass --resume with more epochs to extend it or --overwrite"):
        train_model("segnet", dataset, split, out_dir, **SETTINGS)
    assert {path.name: path.stat().st_mtime_ns for path in out_dir.iterdir()} == before
    again = train_model("segnet", dataset, split, out_dir, resume=True, **SETTINGS)
    assert again["epochs_done"] == 4
    assert {path.name: path.stat().st_mtime_ns for path in out_dir.iterdir()} == before


@pytest.mark.slow
def test_resume_continues_at_the_next_epoch(finished_run, synthetic, tmp_path):
    source, _ = finished_run
    dataset, split = synthetic
    out_dir = tmp_path / "interrupted"
    shutil.copytree(source, out_dir)
    shutil.rmtree(out_dir / "probs")
    record = json.loads((out_dir / "run.json").read_text())
    record.update(status="stopped: interrupted", epochs_done=2)
    (out_dir / "run.json").write_text(json.dumps(record))
    original = pd.read_csv(source / "history.csv")

    resumed = train_model("segnet", dataset, split, out_dir, resume=True, **SETTINGS)
    history = pd.read_csv(out_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(history.iloc[:2], original.iloc[:2])
    assert resumed["status"] == "finished" and resumed["epochs_done"] == 4
    assert resumed["wall_time_s"] > record["wall_time_s"]
    with np.load(out_dir / "last.optimizer.npz") as state:
        # Adam's step count went on from the saved state (4 epochs x 3 batches of 9 images), 2 epochs more
        assert int(state["arr_0"]) == 4 * 3 + 2 * 3
    assert len(list((out_dir / "probs").glob("*.npy"))) == len(split["val"])


@pytest.mark.slow
def test_resume_from_another_model_or_settings_is_refused(finished_run, synthetic):
    out_dir, _ = finished_run
    dataset, split = synthetic
    with pytest.raises(RunFolderError, match=r"cannot resume with other settings: image_size=32 \(now 64\)"):
        train_model("segnet", dataset, split, out_dir, resume=True, **{**SETTINGS, "image_size": 64})
    with pytest.raises(RunFolderError, match=r"cannot resume with other settings: model='segnet' \(now 'unet'\)"):
        train_model("unet", dataset, split, out_dir, resume=True, **SETTINGS)


def test_bad_settings_fail_before_anything_is_written(synthetic, tmp_path):
    dataset, split = synthetic
    out_dir = tmp_path / "never"
    with pytest.raises(SemsegError, match="unknown model 'unet3'.*valid models: unet, deeplabv3plus, segnet, maskrcnn"):
        train_model("unet3", dataset, split, out_dir, **SETTINGS)
    with pytest.raises(SemsegError, match="multiple of 32"):
        train_model("segnet", dataset, split, out_dir, **{**SETTINGS, "image_size": 100})
    with pytest.raises(SemsegError, match="no validation images"):
        train_model("segnet", dataset, {"train": split["train"], "val": []}, out_dir, split_path="s.json", **SETTINGS)
    with pytest.raises(SemsegError, match="epochs: must be at least 1"):
        train_model("segnet", dataset, split, out_dir, **{**SETTINGS, "epochs": 0})
    assert not out_dir.exists()


def test_non_empty_folder_without_a_run_is_refused(synthetic, tmp_path):
    dataset, split = synthetic
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not empty and holds no training run"):
        train_model("segnet", dataset, split, tmp_path, **SETTINGS)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_nan_loss_stops_with_the_epoch_named(synthetic, tmp_path, monkeypatch):
    """The NaN enters in the loss itself (a product with NaN), after every layer: no CPU kernel
    (fused Conv+BatchNorm+ReLU, clipping) can turn it back into a number, as NaN images could."""
    import tensorflow as tf

    class NanLoss(tf.keras.losses.Loss):
        def call(self, y_true, y_pred):
            return tf.reduce_mean(y_pred, axis=[1, 2, 3]) * float("nan")

    monkeypatch.setattr(tf.keras.losses, "BinaryCrossentropy", NanLoss)
    dataset, split = synthetic
    with pytest.raises(SemsegError, match="loss became NaN in epoch 1"):
        train_model("segnet", dataset, split, tmp_path / "nan", **{**SETTINGS, "epochs": 2})
    record = json.loads((tmp_path / "nan" / "run.json").read_text())
    assert record["status"] == "stopped: loss became NaN in epoch 1" and record["details"]["nan_epoch"] == 1
    assert record["epochs_done"] == 0
    assert not (tmp_path / "nan" / "best.weights.h5").exists()


# ---------------------------------------------------------------- a model that trains itself (the Mask R-CNN contract)

def build_toy_instance_model(input_shape, encoder_weights, **options):
    """A stand-in with the Mask R-CNN contract: own train/test steps on instance labels, probabilities out."""
    import tensorflow as tf

    class ToyInstanceModel(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = tf.keras.layers.Conv2D(1, 3, padding="same")
            self.loss_tracker = tf.keras.metrics.Mean(name="loss")
            self.accuracy = tf.keras.metrics.BinaryAccuracy(name="pixel_accuracy")

        def call(self, images, training=False):
            return tf.sigmoid(self.conv(images))

        @property
        def metrics(self):
            return [self.loss_tracker, self.accuracy]

        def _step(self, data, train):
            images, labels = data
            assert labels.dtype == tf.int32
            mask = tf.cast(labels > 0, tf.float32)
            with tf.GradientTape() as tape:
                probabilities = self(images, training=train)
                loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(mask, probabilities))
            if train:
                self.optimizer.apply_gradients(zip(tape.gradient(loss, self.trainable_variables), self.trainable_variables))
            self.loss_tracker.update_state(loss)
            self.accuracy.update_state(mask, probabilities)
            return {metric.name: metric.result() for metric in self.metrics}

        def train_step(self, data):
            return self._step(data, True)

        def test_step(self, data):
            return self._step(data, False)

    return ToyInstanceModel()


@pytest.mark.slow
def test_a_self_compiling_instance_model_trains_through_the_same_trainer(synthetic, tmp_path, monkeypatch):
    dataset, split = synthetic
    entry = registry.ModelEntry("toy", f"{__name__}:build_toy_instance_model", "instances", "resnet50", compiles_itself=True)
    monkeypatch.setitem(registry.MODELS, "toy", entry)
    record = train_model("toy", dataset, split, tmp_path / "toy", **{**SETTINGS, "epochs": 2, "model_options": {}})
    history = pd.read_csv(tmp_path / "toy" / "history.csv")
    assert history["epoch"].tolist() == [1, 2] and history[HISTORY_COLUMNS[1:5]].notna().all().all()
    assert record["settings"]["target"] == "instances" and record["status"] == "finished"
    assert len(list((tmp_path / "toy" / "probs").glob("*.npy"))) == len(split["val"])


# ---------------------------------------------------------------- command line

def test_cli_bad_input_prints_one_line_and_exits_2(synthetic_folder, tmp_path, capsys):
    common = ["--data", str(synthetic_folder), "--split", str(tmp_path / "split.json"), "--out", str(tmp_path / "out")]
    assert main(common + ["--model", "segnett"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: model: unknown model 'segnett'") and "\n" not in error
    assert main(common + ["--model", "unet", "--image-size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "missing"), "--split", "s.json", "--out", "o", "--model", "unet"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "split.json").exists() and not (tmp_path / "out").exists()  # settings checked first


# ---------------------------------------------------------------- optimiser state (public API only)

def _tiny_compiled_model():
    import tensorflow as tf

    from keras_semseg.train import make_optimizer

    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3)])
    model.compile(optimizer=make_optimizer(), loss="mse")
    return model


def test_optimizer_state_is_built_through_public_api_and_leaves_the_weights_as_they_are():
    import inspect

    import keras_semseg.train as train
    from keras_semseg.train import _optimizer_variables, build_optimizer_state

    assert "_create_all_weights" not in inspect.getsource(train)
    model = _tiny_compiled_model()
    before = [variable.numpy().copy() for variable in model.trainable_variables]
    build_optimizer_state(model.optimizer, model.trainable_variables)
    variables = _optimizer_variables(model.optimizer)
    assert len(variables) == 1 + 2 * len(model.trainable_variables)
    for variable, value in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_saved_adam_state_is_restored_exactly(tmp_path):
    from keras_semseg.train import _optimizer_variables, _save_optimizer, restore_optimizer

    x, y = np.ones((8, 4), np.float32), np.zeros((8, 3), np.float32)
    trained = _tiny_compiled_model()
    trained.fit(x, y, epochs=3, batch_size=4, verbose=0)
    _save_optimizer(trained.optimizer, tmp_path / "adam.npz")
    fresh = _tiny_compiled_model()
    fresh.set_weights(trained.get_weights())
    assert restore_optimizer(fresh, tmp_path / "adam.npz")
    saved = [v.numpy() for v in _optimizer_variables(trained.optimizer)]
    restored = [v.numpy() for v in _optimizer_variables(fresh.optimizer)]
    assert int(restored[0]) == 6
    for a, b in zip(saved, restored):
        np.testing.assert_array_equal(a, b)


def test_cosine_schedule_falls_from_the_adam_default_to_zero_over_the_run():
    from keras_semseg.train import make_optimizer

    schedule = make_optimizer("cosine", total_steps=80).learning_rate
    assert float(schedule(0)) == pytest.approx(1e-3)
    assert float(schedule(40)) == pytest.approx(0.5e-3, rel=1e-5)
    assert float(schedule(80)) == pytest.approx(0.0, abs=1e-9)
    assert float(make_optimizer().learning_rate) == pytest.approx(1e-3)


def test_batchnorm_momentum_reaches_nested_models():
    import tensorflow as tf

    from keras_semseg.train import set_batchnorm_momentum

    inner = tf.keras.Sequential([tf.keras.layers.Conv2D(2, 3), tf.keras.layers.BatchNormalization()])
    outer = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), inner, tf.keras.layers.BatchNormalization()])
    assert set_batchnorm_momentum(outer, 0.9) == 2
    assert [layer.momentum for layer in (inner.layers[1], outer.layers[1])] == [0.9, 0.9]


def test_steps_per_epoch_repeats_the_training_images(synthetic, tmp_path):
    dataset, split = synthetic
    settings = {**SETTINGS, "epochs": 2, "steps_per_epoch": 5, "lr_schedule": "cosine", "batchnorm_momentum": 0.5,
                "eval_weights": "last"}
    record = train_model("segnet", dataset, split, tmp_path / "run", **settings)
    assert record["status"] == "finished" and record["epochs_done"] == 2
    assert record["details"]["probs_weights"] == "last.weights.h5" and record["settings"]["eval_weights"] == "last"
    assert record["settings"]["steps_per_epoch"] == 5 and record["settings"]["lr_schedule"] == "cosine"
    assert record["settings"]["batchnorm_momentum"] == 0.5 and "cosine" in record["settings"]["optimizer"]
    with pytest.raises(SemsegError, match="lr_schedule: must be one of constant, cosine .*got 'step'"):
        train_model("segnet", dataset, split, tmp_path / "never", **{**settings, "lr_schedule": "step"})
    with pytest.raises(SemsegError, match="steps_per_epoch: must be at least 1"):
        train_model("segnet", dataset, split, tmp_path / "never", **{**settings, "steps_per_epoch": 0})
    with pytest.raises(SemsegError, match="eval_weights: must be best .* or last"):
        train_model("segnet", dataset, split, tmp_path / "never", **{**settings, "eval_weights": "middle"})
    assert not (tmp_path / "never").exists()
