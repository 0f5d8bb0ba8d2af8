"""Train one semantic segmentation model (``semseg-train``): paper defaults, resumable, atomic outputs.

Writes into ``out_dir``: ``run.json`` (every setting, split, versions, status, best
epoch, ``wall_time_s`` for the whole call including data loading and the probability
maps, ``train_time_s`` the sum of the epoch times; both add up over resumes),
``history.csv`` (``epoch,loss,pixel_accuracy,val_loss,val_pixel_accuracy,time_s``, one
row per finished epoch), ``best.weights.h5`` (lowest validation loss),
``last.weights.h5`` and ``last.optimizer.npz`` (for ``--resume``), and after training
``probs/<stem>.npy``: float16 H x W cell probabilities in [0, 1] at each validation
image's original size, made with the best weights.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data import Dataset, DatasetError
from data.geometry import training_geometry
from data.outputs import write_csv, write_json

from .errors import SemsegError
from .registry import TENSORFLOW_HINT, check_image_size, get_entry

HISTORY_COLUMNS = ["epoch", "loss", "pixel_accuracy", "val_loss", "val_pixel_accuracy", "time_s"]
RUN_FILES = ("run.json", "history.csv", "best.weights.h5", "last.weights.h5", "last.optimizer.npz")
RESUME_KEYS = ("model", "image_size", "batch_size", "encoder_weights", "augment", "mixed_precision", "seed",
               "model_options", "train", "val")


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "segmentation-models", "mscseg"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SemsegError(f"{path}: cannot read the run record ({error}); pass --overwrite to start again") from None


def _check_split(split: dict, dataset: Dataset, split_path: str | Path | None) -> tuple[list[str], list[str]]:
    if not isinstance(split, dict) or not isinstance(split.get("train"), list) or not isinstance(split.get("val"), list):
        raise SemsegError('split must be a dict {"train": [...], "val": [...]}')
    train, val = [str(name) for name in split["train"]], [str(name) for name in split["val"]]
    source = split_path or dataset.root or "split"
    if not val:
        raise SemsegError(f"{source}: the split has no validation images (need at least one to pick the best epoch)")
    if not train:
        raise SemsegError(f"{source}: the split has no training images")
    dataset.subset(train + val)
    return train, val


def _settings(model_name: str, dataset: Dataset, split: dict, train: list[str], val: list[str], image_size: int,
              epochs: int, batch_size: int, encoder_weights: Any, augment: bool, mixed_precision: bool, seed: int,
              split_path: str | None, model_options: dict) -> dict:
    from .pipeline import Augmentation

    return {
        "model": model_name,
        "target": get_entry(model_name).target,
        "image_size": image_size,
        "epochs": epochs,
        "batch_size": batch_size,
        "encoder_weights": "none" if encoder_weights is None else str(encoder_weights),
        "augment": bool(augment),
        "augmentation": Augmentation().to_dict() if augment else None,
        "mixed_precision": bool(mixed_precision),
        "seed": int(seed),
        "model_options": dict(model_options),
        "loss": "model's own" if get_entry(model_name).compiles_itself else "binary_crossentropy",
        "optimizer": "Adam (tf.keras.optimizers.legacy.Adam, Keras defaults: learning rate 0.001, betas 0.9/0.999, epsilon 1e-7)",
        "dataset": {"root": dataset.root, "format": dataset.format},
        "split_path": None if split_path is None else str(split_path),
        "split_seed": split.get("seed"),
        "train": train,
        "val": val,
    }


def _mismatches(previous: dict, current: dict) -> list[str]:
    return [key for key in RESUME_KEYS if previous.get(key) != current.get(key)]


def _check_out_dir(out_dir: Path, settings: dict, resume: bool, overwrite: bool) -> dict | None:
    """The previous run record to resume from (or None to start fresh); ``SemsegError`` when the folder is in the way."""
    run_path = out_dir / "run.json"
    if not run_path.is_file():
        if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
            raise SemsegError(f"{out_dir}: folder is not empty and holds no training run; choose another --out or pass --overwrite")
        return None
    previous = _read_json(run_path)
    if overwrite:
        return None
    status = previous.get("status", "unknown")
    if not resume:
        if status == "finished":
            raise SemsegError(f"{out_dir}: holds a finished {previous.get('model')} run; pass --overwrite to replace it (nothing was written)")
        raise SemsegError(f"{out_dir}: holds an unfinished run ({previous.get('epochs_done', 0)} of {previous.get('epochs')} epochs, "
                          f"status {status}); pass --resume to continue it or --overwrite to start again")
    differing = _mismatches(previous, settings)
    if differing:
        details = ", ".join(f"{key}: {_short(previous.get(key))} -> {_short(settings.get(key))}" for key in differing)
        raise SemsegError(f"{out_dir}: cannot resume, the run was made with other settings ({details}); "
                          "use the same settings, another --out, or --overwrite")
    if previous.get("epochs_done", 0) > 0 and not (out_dir / "last.weights.h5").is_file():
        raise SemsegError(f"{out_dir / 'last.weights.h5'}: missing, cannot resume; pass --overwrite to start again")
    return previous


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, list) else f"[{len(value)} names]"
    return text if len(text) <= 40 else text[:37] + "..."


def _remove_previous(out_dir: Path) -> None:
    import shutil

    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    if (out_dir / "probs").is_dir():
        shutil.rmtree(out_dir / "probs")


def _save_weights(model: Any, path: Path) -> None:
    partial = path.with_name(path.name.replace(".weights.h5", ".partial.weights.h5"))
    model.save_weights(str(partial))
    os.replace(partial, path)


def make_optimizer() -> Any:
    """Adam with the Keras defaults (lr 1e-3, betas 0.9/0.999, epsilon 1e-7), fused update kernels."""
    import tensorflow as tf

    return tf.keras.optimizers.legacy.Adam()


def _optimizer_variables(optimizer: Any) -> list:
    variables = optimizer.variables
    return list(variables() if callable(variables) else variables)


def _save_optimizer(optimizer: Any, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        np.savez(handle, *[np.asarray(variable.numpy()) for variable in _optimizer_variables(optimizer)])
    os.replace(partial, path)


def _restore_optimizer(model: Any, path: Path) -> bool:
    """Load Adam's saved state into ``model.optimizer``; False (fresh optimizer) when it does not fit."""
    if not path.is_file():
        return False
    optimizer = model.optimizer
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if hasattr(inner, "_create_all_weights"):
        inner._create_all_weights(model.trainable_variables)
    else:
        inner.build(model.trainable_variables)
    with np.load(path) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    variables = _optimizer_variables(optimizer)
    if len(values) != len(variables) or any(tuple(v.shape) != value.shape for v, value in zip(variables, values)):
        return False
    for variable, value in zip(variables, values):
        variable.assign(value)
    return True


def _ensure_built(model: Any, image_size: int) -> None:
    if not model.built:
        import tensorflow as tf

        model(tf.zeros((1, image_size, image_size, 3), tf.float32), training=False)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _history_rows(path: Path, epochs_done: int) -> list[dict]:
    if not path.is_file() or epochs_done == 0:
        return []
    import pandas as pd

    frame = pd.read_csv(path)
    return frame[frame["epoch"] <= epochs_done].to_dict("records")


def _make_callback(out_dir: Path, record: dict, rows: list[dict], quiet: bool, started: float, wall_before: float) -> Any:
    import pandas as pd
    import tensorflow as tf

    class EpochRecorder(tf.keras.callbacks.Callback):
        """Per epoch: history row, last/best weights, optimizer state, run.json; stops on NaN."""

        def __init__(self) -> None:
            super().__init__()
            self.nan_epoch: int | None = None
            self.epoch_started = time.perf_counter()

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch_started = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if logs and not _finite(logs.get("loss")):
                self.model.stop_training = True

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = dict(logs or {})
            number = epoch + 1
            if not (_finite(logs.get("loss")) and _finite(logs.get("val_loss"))):
                self.nan_epoch = number
                self.model.stop_training = True
                return
            row = {"epoch": number, **{key: float(logs.get(key, float("nan"))) for key in HISTORY_COLUMNS[1:5]},
                   "time_s": round(time.perf_counter() - self.epoch_started, 3)}
            rows.append(row)
            _save_weights(self.model, out_dir / "last.weights.h5")
            _save_optimizer(self.model.optimizer, out_dir / "last.optimizer.npz")
            best = record.get("best_val_loss")
            if best is None or row["val_loss"] < best:
                _save_weights(self.model, out_dir / "best.weights.h5")
                record.update(best_val_loss=row["val_loss"], best_epoch=number)
            write_csv(out_dir / "history.csv", pd.DataFrame(rows, columns=HISTORY_COLUMNS))
            record.update(epochs_done=number, wall_time_s=round(wall_before + time.perf_counter() - started, 1),
                          train_time_s=round(sum(r["time_s"] for r in rows), 1))
            write_json(out_dir / "run.json", record)
            if quiet:
                print(f"{record['model']} epoch {number}/{record['epochs']}: loss {row['loss']:.4f} "
                      f"pixel_accuracy {row['pixel_accuracy']:.4f} val_loss {row['val_loss']:.4f} "
                      f"val_pixel_accuracy {row['val_pixel_accuracy']:.4f} ({row['time_s']:.1f} s)", flush=True)

    return EpochRecorder()


def write_probs(model: Any, dataset: Dataset, names: Sequence[str], image_size: int, folder: Path, batch_size: int = 8) -> list[Path]:
    """``folder/<stem>.npy``: float16 H x W probabilities at each image's original size."""
    from .predict import predict_probs

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, len(names), batch_size):
        chunk = list(names[start:start + batch_size])
        images = [dataset.get(name).image for name in chunk]
        for name, probs in zip(chunk, predict_probs(model, images, image_size, batch_size)):
            path = folder / f"{name}.npy"
            partial = path.with_name(path.name + ".partial")
            with open(partial, "wb") as handle:
                np.save(handle, probs.astype(np.float16))
            os.replace(partial, path)
            written.append(path)
    return written


def train_model(
    model_name: str,
    dataset: Dataset,
    split: dict,
    out_dir: str | Path,
    *,
    image_size: int = 256,
    epochs: int = 100,
    batch_size: int = 8,
    encoder_weights: Any = "imagenet",
    augment: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    mixed_precision: bool = False,
    seed: int = 0,
    split_path: str | Path | None = None,
    model_options: dict | None = None,
) -> dict:
    """Train ``model_name`` on ``split["train"]``, validate on ``split["val"]``; returns what run.json holds.

    Binary cross-entropy and Adam (lr 1e-3) unless the model trains itself (Mask R-CNN).
    ``resume`` continues an unfinished run in ``out_dir`` from its last epoch (same
    settings required; a finished run is returned as it is, or extended when
    ``epochs`` is larger; an empty or missing ``out_dir`` starts a new run);
    ``overwrite`` replaces a previous run. Bad settings, data or weights fail before
    anything is written. A NaN loss stops
    training with ``SemsegError`` naming the epoch; the last good checkpoint stays.
    """
    entry = get_entry(model_name)
    image_size = check_image_size(image_size)
    if int(epochs) != epochs or epochs < 1:
        raise SemsegError(f"epochs must be a positive integer, got {epochs}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise SemsegError(f"batch size must be a positive integer, got {batch_size}")
    train, val = _check_split(split, dataset, split_path)
    out_dir = Path(out_dir)
    options = dict(model_options or {})
    settings = _settings(model_name, dataset, split, train, val, image_size, int(epochs), int(batch_size), encoder_weights,
                         augment, mixed_precision, seed, None if split_path is None else str(split_path), options)
    previous = _check_out_dir(out_dir, settings, resume, overwrite)
    started = time.perf_counter()
    wall_before = float(previous.get("wall_time_s", 0.0)) if previous else 0.0
    epochs_done = int(previous.get("epochs_done", 0)) if previous else 0
    if previous and previous.get("status") == "finished" and epochs_done >= epochs:
        if not quiet:
            print(f"{out_dir}: {model_name} already finished {epochs_done} epochs; nothing to resume")
        return previous

    from .weights import keras_application_weights

    weights_path = keras_application_weights(entry.encoder, encoder_weights) if epochs_done == 0 else None
    try:
        import tensorflow as tf
    except ImportError:
        raise SemsegError(TENSORFLOW_HINT) from None
    from .pipeline import evaluation_dataset, source_dataset, training_dataset

    tf.keras.utils.set_random_seed(int(seed))
    previous_policy = tf.keras.mixed_precision.global_policy()
    if mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        train_source, cached = source_dataset(dataset, train, image_size, entry.target, shuffle_seed=int(seed))
        val_source, _ = source_dataset(dataset, val, image_size, entry.target)
        train_batches = training_dataset(train_source, len(train) if cached else min(len(train), 64), int(batch_size),
                                         augment, int(seed))
        val_batches = evaluation_dataset(val_source, int(batch_size))

        gpus = tf.config.list_physical_devices("GPU")
        strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
        with strategy.scope():
            from .registry import build

            model = build(model_name, (image_size, image_size, 3), weights_path, **options)
            if entry.compiles_itself:
                model.compile(optimizer=make_optimizer())
            else:
                model.compile(optimizer=make_optimizer(), loss=tf.keras.losses.BinaryCrossentropy(),
                              metrics=[tf.keras.metrics.BinaryAccuracy(name="pixel_accuracy", threshold=0.5)])
            _ensure_built(model, image_size)
            if epochs_done:
                try:
                    model.load_weights(str(out_dir / "last.weights.h5"))
                except (ValueError, OSError, KeyError) as error:
                    raise SemsegError(f"{out_dir / 'last.weights.h5'}: cannot be loaded into {model_name} "
                                      f"({str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__})") from None
                if not _restore_optimizer(model, out_dir / "last.optimizer.npz"):
                    print(f"{out_dir}: optimizer state not restored; Adam restarts from zero moments", file=sys.stderr)

        if overwrite:
            _remove_previous(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        record = dict(previous) if previous else {}
        record.update(settings)
        record.update(
            status="running", epochs_done=epochs_done, best_epoch=record.get("best_epoch"),
            best_val_loss=record.get("best_val_loss"), wall_time_s=wall_before,
            versions=_versions(), devices={"gpus": len(gpus), "replicas": strategy.num_replicas_in_sync,
                                           "strategy": type(strategy).__name__},
            data_cached_in_memory=cached, out_dir=str(out_dir), parameters=int(model.count_params()),
            geometry=training_geometry(dataset, train, image_size),
            started_at=record.get("started_at") or time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        write_json(out_dir / "run.json", record)

        rows = _history_rows(out_dir / "history.csv", epochs_done)
        recorder = _make_callback(out_dir, record, rows, quiet, started, wall_before)
        try:
            model.fit(train_batches, validation_data=val_batches, epochs=int(epochs), initial_epoch=epochs_done,
                      callbacks=[recorder], verbose=0 if quiet else 1)
        except KeyboardInterrupt:
            record.update(status="interrupted")
            write_json(out_dir / "run.json", record)
            raise
        except tf.errors.OpError as error:
            record.update(status="failed")
            write_json(out_dir / "run.json", record)
            message = (error.message or str(error)).strip().splitlines()
            raise SemsegError(f"{out_dir}: training failed: {message[0] if message else type(error).__name__}") from None
        if recorder.nan_epoch is not None:
            record.update(status="stopped_nan", nan_epoch=recorder.nan_epoch)
            write_json(out_dir / "run.json", record)
            last_good = record.get("epochs_done", 0)
            kept = f"the last good checkpoint (epoch {last_good}) is in last.weights.h5" if last_good else "no epoch finished, no checkpoint"
            raise SemsegError(f"{out_dir}: loss became NaN in epoch {recorder.nan_epoch}; training stopped, {kept}")

        model.load_weights(str(out_dir / "best.weights.h5"))
        probs = write_probs(model, dataset, val, image_size, out_dir / "probs", int(batch_size))
        record.update(status="finished", probs=len(probs), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                      wall_time_s=round(wall_before + time.perf_counter() - started, 1))
        write_json(out_dir / "run.json", record)
        return record
    finally:
        tf.keras.mixed_precision.set_global_policy(previous_policy)


def _parser() -> argparse.ArgumentParser:
    from .registry import available_models

    parser = argparse.ArgumentParser(prog="semseg-train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset folder or file (any format data.read_dataset reads)")
    parser.add_argument("--format", default=None, help="dataset format (detected when omitted)")
    parser.add_argument("--image-name", default=None, help="per_sample format: image file name inside each sample folder")
    parser.add_argument("--mask-name", default=None, help="per_sample format: label file name inside each sample folder")
    parser.add_argument("--split", required=True, help="split JSON; made (80:20, --seed) if it does not exist")
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(available_models())}")
    parser.add_argument("--out", required=True, help="output folder of this training run")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=256, help="training size, a multiple of 32 (default 256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--encoder-weights", default="imagenet", help="imagenet, none, or a path to a Keras .h5 file")
    parser.add_argument("--no-augment", action="store_true", help="train without flips, rotations and zoom")
    parser.add_argument("--resume", action="store_true", help="continue an unfinished run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")
    parser.add_argument("--mixed-precision", action="store_true", help="float16 compute (GPU), float32 output")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from data import read_dataset
        from data.split import load_or_make_split

        options = {key: value for key, value in (("image_name", args.image_name), ("mask_name", args.mask_name)) if value}
        dataset = read_dataset(args.data, args.format, **options)
        split = load_or_make_split(args.split, dataset.names, seed=args.seed, source=str(args.data))
        result = train_model(
            args.model, dataset, split, args.out, image_size=args.image_size, epochs=args.epochs,
            batch_size=args.batch_size, encoder_weights=args.encoder_weights, augment=not args.no_augment,
            resume=args.resume, overwrite=args.overwrite, quiet=args.quiet, mixed_precision=args.mixed_precision,
            seed=args.seed, split_path=args.split,
        )
    except (SemsegError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; continue with --resume", file=sys.stderr)
        return 130
    print(f"{args.model}: best epoch {result.get('best_epoch')} (val_loss {result.get('best_val_loss'):.4f}), "
          f"{result.get('wall_time_s')} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
