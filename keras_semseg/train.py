"""Train one semantic segmentation model (``semseg-train``): paper defaults, resumable, atomic outputs.

Writes into ``out_dir``: ``run.json`` (``data.run_record.RunRecord``: settings, split,
versions, status, best epoch and loss, ``wall_time_s`` for the whole call including data
loading and the probability maps, ``details.train_time_s`` the sum of the epoch times;
both add up over resumes),
``history.csv`` (``epoch,loss,pixel_accuracy,val_loss,val_pixel_accuracy,time_s``, one
row per finished epoch), ``best.weights.h5`` (lowest validation loss),
``last.weights.h5`` and ``last.optimizer.npz`` (for ``--resume``), and after training
``probs/<stem>.npy``: float16 H x W cell probabilities in [0, 1] at each validation
image's original size, made with the best weights.

On several GPUs (``MirroredStrategy``) or machines (``TF_CONFIG``, ``MultiWorkerMirroredStrategy``)
the same command trains one model with the configured ``batch_size`` as the global batch; only
the chief writes ``out_dir`` (see ``keras_semseg.distribute``).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data import Dataset
from data.cli import add_dataset_arguments, make_parser, open_dataset, run_cli
from data.geometry import training_geometry
from data.lifecycle import BUDGET_REACHED, RUNNING, RunControl, RunSpec, TrainingRun, open_run, summary
from data.lock import lock_output_folder
from data.settings import add_arguments, field_names, from_arguments
from data.run_record import HISTORY_CSV, RUN_JSON

from .errors import SemsegError
from .registry import TENSORFLOW_HINT, get_entry
from .settings import EVAL_WEIGHTS, LR_SCHEDULES, TrainRecipe, TrainSettings
from .tf_env import make_reproducible, tensorflow

HISTORY_COLUMNS = ["epoch", "loss", "pixel_accuracy", "val_loss", "val_pixel_accuracy", "time_s"]
RUN_FILES = (RUN_JSON, HISTORY_CSV, "best.weights.h5", "last.weights.h5", "last.optimizer.npz")
RESUME_KEYS = tuple(name for name in field_names(TrainSettings)
                    if name not in ("epochs", "eval_weights", "deterministic", "max_minutes"))
__all__ = ["EVAL_WEIGHTS", "LR_SCHEDULES", "TrainRecipe", "TrainSettings", "train_model"]


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


def run_spec(settings: TrainSettings, split_record: dict) -> RunSpec:
    """What the shared life cycle (``data.lifecycle``) needs to know about this run."""
    return RunSpec("keras", settings.model, settings.to_record(), split_record, settings.epochs, RESUME_KEYS, RUN_FILES,
                   resume_files=("last.weights.h5",), folders=("probs",), max_minutes=settings.max_minutes)


def _partial(path: Path) -> Path:
    """Where ``path`` is written before it replaces the finished file (Keras wants ``.weights.h5`` last)."""
    if path.name.endswith(".weights.h5"):
        return path.with_name(path.name.replace(".weights.h5", ".partial.weights.h5"))
    return path.with_name(path.name + ".partial")


def _write_checkpoint(writers: dict[Path, Any]) -> None:
    """Call each ``writer(partial)``, then move every partial into place. When a write fails (a full disk, say)
    the partials are removed, every finished file stays as it was, and ``SemsegError`` names the file."""
    done: list[Path] = []
    for path, write in writers.items():
        try:
            write(_partial(path))
            done.append(path)
        except OSError as error:
            for written in (*done, path):
                with contextlib.suppress(OSError):
                    _partial(written).unlink()
            text = str(error).strip()
            reason = error.strerror or (text.splitlines()[0] if text else type(error).__name__)
            raise SemsegError(f"cannot be written ({reason}); the previous checkpoint is kept", path) from None
    for path in done:
        try:
            os.replace(_partial(path), path)
        except OSError as error:
            raise SemsegError(f"cannot be written ({error.strerror or error}); the previous checkpoint is kept", path) from None


def make_optimizer(lr_schedule: str = "constant", total_steps: int = 1) -> Any:
    """Adam with the Keras defaults (lr 1e-3, betas 0.9/0.999, epsilon 1e-7), fused update kernels.

    ``lr_schedule="cosine"``: the learning rate falls from 1e-3 to 0 along a half cosine over
    ``total_steps`` optimiser steps (the schedule follows Adam's step counter, so it resumes).
    """
    tf = tensorflow()

    if lr_schedule == "cosine":
        return tf.keras.optimizers.legacy.Adam(tf.keras.optimizers.schedules.CosineDecay(1e-3, max(int(total_steps), 1)))
    return tf.keras.optimizers.legacy.Adam()


def _optimizer_variables(optimizer: Any) -> list:
    variables = optimizer.variables
    return list(variables() if callable(variables) else variables)


def _optimizer_writer(optimizer: Any) -> Any:
    """A writer (``partial`` path -> None) of Adam's state as ``.npz`` (``arr_0``, ... in the optimiser's order)."""
    def write(partial: Path) -> None:
        with open(partial, "wb") as handle:
            np.savez(handle, *[np.asarray(variable.numpy()) for variable in _optimizer_variables(optimizer)])
    return write


def _save_optimizer(optimizer: Any, path: Path) -> None:
    """Adam's state into ``path`` (``.npz``) through a partial file (see ``_write_checkpoint``)."""
    _write_checkpoint({path: _optimizer_writer(optimizer)})


def save_checkpoint(model: Any, folder: Path, improved: bool) -> None:
    """``last.weights.h5``, ``last.optimizer.npz`` and, when ``improved``, ``best.weights.h5`` in ``folder``,
    moved into place together once all are written (see ``_write_checkpoint``)."""
    def weights(partial: Path) -> None:
        model.save_weights(str(partial))

    writers = {folder / "last.weights.h5": weights, folder / "last.optimizer.npz": _optimizer_writer(model.optimizer)}
    if improved:
        writers[folder / "best.weights.h5"] = weights
    _write_checkpoint(writers)


def build_optimizer_state(optimizer: Any, variables: list) -> None:
    """Create the optimiser's slot variables for ``variables`` through public API only.

    Keras 3-style optimisers have ``build(variables)``; the legacy ones (TF 2.15, tf-keras) get
    one step with zero gradients, which creates the slots in the order ``fit`` would and,
    with zero moments, leaves every weight as it is.
    """
    tf = tensorflow()

    inner = getattr(optimizer, "inner_optimizer", optimizer)
    legacy = getattr(getattr(tf.keras.optimizers, "legacy", None), "Optimizer", ())
    if hasattr(inner, "build") and not isinstance(inner, legacy):
        inner.build(variables)
        return
    zeros = [tf.zeros_like(variable) for variable in variables]
    tf.distribute.get_strategy().run(lambda: optimizer.apply_gradients(zip(zeros, variables)))


def restore_optimizer(model: Any, path: Path) -> bool:
    """Load Adam's saved state into ``model.optimizer``; False (fresh optimizer) when it does not fit."""
    if not path.is_file():
        return False
    optimizer = model.optimizer
    build_optimizer_state(optimizer, model.trainable_variables)
    with np.load(path) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    variables = _optimizer_variables(optimizer)
    if len(values) != len(variables) or any(tuple(v.shape) != value.shape for v, value in zip(variables, values)):
        return False
    for variable, value in zip(variables, values):
        variable.assign(value)
    return True


def set_batchnorm_momentum(model: Any, momentum: float) -> int:
    """Set the moving-average momentum of every BatchNormalization layer, nested models included; returns their count.

    Keras's default 0.99 needs a few hundred steps before the moving statistics (used at
    validation and prediction) match a randomly initialised network's; a short run needs less.
    """
    tf = tensorflow()

    count = 0
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
            count += 1
        stack.extend(getattr(layer, "layers", []))
    return count


def _ensure_built(model: Any, image_size: int) -> None:
    if not model.built:
        tf = tensorflow()

        model(tf.zeros((1, image_size, image_size, 3), tf.float32), training=False)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _make_callback(run: TrainingRun, strategy: Any, quiet: bool) -> Any:
    tf = tensorflow()

    from .distribute import any_worker, scratch_folder

    class EpochCheckpoint(tf.keras.callbacks.Callback):
        """Per epoch: the shared life cycle's bookkeeping (last/best weights, optimizer state, history, run.json,
        time budget); stops on NaN. Every worker saves (the chief into the run folder, the others into a
        temporary folder) and every worker stops when one reaches the time budget."""

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
            go_on = run.end_epoch(number, row, row["val_loss"], self.save)
            if not run.writes:
                self.save(run.best_epoch == number)
            if any_worker(strategy, not go_on):
                self.model.stop_training = True
                if run.status == RUNNING:
                    run.status = BUDGET_REACHED
            if quiet:
                print(f"{run.spec.model} epoch {number}/{run.spec.epochs}: loss {row['loss']:.4f} "
                      f"pixel_accuracy {row['pixel_accuracy']:.4f} val_loss {row['val_loss']:.4f} "
                      f"val_pixel_accuracy {row['val_pixel_accuracy']:.4f} ({row['time_s']:.1f} s)", flush=True)

        def save(self, improved: bool) -> None:
            with scratch_folder(run.out_dir, run.writes) as folder:
                save_checkpoint(self.model, folder, improved)

    return EpochCheckpoint()


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


def single_device_model(settings: TrainSettings, path: Path) -> Any:
    """The model of ``settings`` built outside any strategy, with the weights in ``path``.

    Keras 2 cannot load a ``.weights.h5`` file straight into mirrored variables (it assigns
    the file's datasets, which only a one-device variable accepts), so a distributed model
    takes this model's ``get_weights()``.
    """
    from .registry import build

    model = build(settings.model, (settings.image_size, settings.image_size, 3), None, **settings.model_options)
    _ensure_built(model, settings.image_size)
    _load_weights(model, path, settings.model)
    return model


def _load_weights(model: Any, path: Path, name: str, values: list | None = None) -> None:
    try:
        if values is None:
            model.load_weights(str(path))
        else:
            model.set_weights(values)
    except (ValueError, OSError, KeyError) as error:
        text = str(error).strip()
        raise SemsegError(f"cannot be loaded into {name} ({text.splitlines()[0] if text else type(error).__name__})", path) from None


def build_compiled_model(settings: TrainSettings, weights_path: Any, out_dir: Path, epochs_done: int,
                         steps_per_epoch: int = 1, strategy: Any = None) -> tuple[Any, Any]:
    """(model, strategy): built and compiled in the scope of ``strategy`` (default: ``distribute.make_strategy()``);
    resumed weights and Adam state loaded."""
    tf = tensorflow()

    from .distribute import make_strategy
    from .registry import build

    entry = get_entry(settings.model)
    strategy = make_strategy() if strategy is None else strategy
    last = out_dir / "last.weights.h5"
    resumed = single_device_model(settings, last).get_weights() if epochs_done and strategy.num_replicas_in_sync > 1 else None
    with strategy.scope():
        model = build(settings.model, (settings.image_size, settings.image_size, 3), weights_path, **settings.model_options)
        if settings.batchnorm_momentum is not None:
            set_batchnorm_momentum(model, settings.batchnorm_momentum)
        optimizer = make_optimizer(settings.lr_schedule, settings.epochs * steps_per_epoch)
        if entry.compiles_itself:
            model.compile(optimizer=optimizer)
        else:
            model.compile(optimizer=optimizer, loss=tf.keras.losses.BinaryCrossentropy(),
                          metrics=[tf.keras.metrics.BinaryAccuracy(name="pixel_accuracy", threshold=0.5)])
        _ensure_built(model, settings.image_size)
        if epochs_done:
            _load_weights(model, last, settings.model, resumed)
            if not restore_optimizer(model, out_dir / "last.optimizer.npz"):
                print(f"{out_dir}: optimizer state not restored; Adam restarts from zero moments", file=sys.stderr)
    return model, strategy


def fit_epochs(model: Any, batches: tuple, settings: TrainSettings, run: TrainingRun, quiet: bool, strategy: Any = None) -> None:
    """Train from ``run.start_epoch`` to ``settings.epochs`` or the time budget, checkpointing each epoch;
    NaN and TensorFlow errors are ``SemsegError`` (recorded in run.json by ``run.guard``)."""
    tf = tensorflow()

    train_batches, val_batches = batches
    checkpoint = _make_callback(run, strategy or model.distribute_strategy, quiet)
    try:
        model.fit(train_batches, validation_data=val_batches, epochs=settings.epochs, initial_epoch=run.start_epoch,
                  steps_per_epoch=settings.steps_per_epoch,
                  callbacks=[checkpoint], verbose=0 if quiet else 1)
    except tf.errors.OpError as error:
        message = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", (error.message or str(error)).strip()).splitlines()
        first = message[0] if message else type(error).__name__
        if isinstance(error, tf.errors.UnavailableError):
            first = f"a worker of the cluster stopped answering ({first[:200]}); continue with --resume"
        raise SemsegError(f"training failed: {first}", run.out_dir) from None
    if checkpoint.nan_epoch is not None:
        run.stop(f"stopped: loss became NaN in epoch {checkpoint.nan_epoch}", nan_epoch=checkpoint.nan_epoch)
        last_good = run.record.epochs_done
        kept = f"the last good checkpoint (epoch {last_good}) is in last.weights.h5" if last_good else "no epoch finished, no checkpoint"
        raise SemsegError(f"{run.out_dir}: loss became NaN in epoch {checkpoint.nan_epoch}; training stopped, {kept}")


def train_model(
    model_name: str,
    dataset: Dataset,
    split: dict,
    out_dir: str | Path,
    *,
    settings: TrainRecipe | None = None,
    control: RunControl | None = None,
    **recipe: Any,
) -> dict:
    """Train ``model_name`` on ``split["train"]``, validate on ``split["val"]``; returns what run.json holds.

    ``settings`` (a ``TrainSettings`` or ``TrainRecipe``) and/or ``recipe`` (its fields as keywords,
    which win) are the recipe. Binary cross-entropy and Adam (lr 1e-3)
    unless the model trains itself (Mask R-CNN). ``resume`` continues an unfinished run in
    ``out_dir`` from its last epoch (same settings and split required; a finished run is
    returned as it is, or extended when ``epochs`` is larger; an empty or missing ``out_dir``
    starts a new run); ``overwrite`` replaces a previous run. Bad settings, data or weights
    fail before anything is written. A NaN loss stops training with ``SemsegError`` naming
    the epoch; the last good checkpoint stays. ``control`` (``data.lifecycle.RunControl``) or its fields as
    keywords (``resume=True``, ``quiet=True``, ``split_path=...``) are the run control.
    """
    control = RunControl.taken_from(control, recipe)
    resume, overwrite, quiet, split_path = control.resume, control.overwrite, control.quiet, control.split_path
    try:
        tf = tensorflow()
    except ImportError:
        raise SemsegError(TENSORFLOW_HINT) from None
    try:
        given = {} if settings is None else {name: getattr(settings, name) for name in field_names(type(settings))}
        settings = TrainSettings(**{**given, **recipe, "model": model_name}).checked()
    except TypeError as error:
        raise SemsegError(f"unknown training setting ({error})") from None
    train, val = _check_split(split, dataset, split_path)
    split_record = {"path": None if split_path is None else str(split_path), "seed": split.get("seed"), "train": train, "val": val}
    from .distribute import check_same_epoch, is_chief, make_strategy, per_replica_batch

    strategy = make_strategy()
    per_replica_batch(strategy, settings.batch_size)
    run = open_run(out_dir, run_spec(settings, split_record), resume, overwrite, writes=is_chief())
    check_same_epoch(strategy, run.start_epoch, run.out_dir)
    if run.done:
        if not quiet:
            print(f"{run.out_dir}: {model_name} already finished {run.start_epoch} epochs; nothing to resume")
        return run.record.to_dict()

    from .weights import keras_application_weights

    weights_path = keras_application_weights(get_entry(model_name).encoder, settings.encoder_weights) if run.start_epoch == 0 else None
    tf.keras.utils.set_random_seed(settings.seed)
    reproducibility = make_reproducible(settings.deterministic)
    previous_policy = tf.keras.mixed_precision.global_policy()
    if settings.mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        batches, cached = _batches(dataset, train, val, settings)
        model, strategy = build_compiled_model(settings, weights_path, run.out_dir, run.start_epoch,
                                               settings.train_steps(len(train)), strategy)
        run.start(_details(model, strategy, cached, settings.batch_size)
                  | {"geometry": training_geometry(dataset, train, settings.image_size), "reproducibility": reproducibility})
        with run.guard():
            fit_epochs(model, batches, settings, run, quiet, strategy)
            if not run.writes:
                return run.finish()
            evaluated = run.out_dir / f"{settings.eval_weights}.weights.h5"
            if strategy.num_replicas_in_sync > 1:
                model = single_device_model(settings, evaluated)
            else:
                model.load_weights(str(evaluated))
            probs = write_probs(model, dataset, val, settings.image_size, run.out_dir / "probs", settings.batch_size)
        run.record.details.update(probs_weights=f"{settings.eval_weights}.weights.h5", probs=len(probs))
        return run.finish()
    finally:
        tf.keras.mixed_precision.set_global_policy(previous_policy)


def _details(model: Any, strategy: Any, cached: bool, batch_size: int) -> dict:
    """What run.json's details say about the devices and the strategy, the data cache and the model size."""
    from .distribute import details

    return {"devices": details(strategy, batch_size), "data_cached_in_memory": cached, "parameters": int(model.count_params())}


def _batches(dataset: Dataset, train: list[str], val: list[str], settings: TrainSettings) -> tuple[tuple, bool]:
    """((training batches, validation batches), whether the training images are cached in memory)."""
    from .pipeline import evaluation_dataset, source_dataset, training_dataset

    target = get_entry(settings.model).target
    train_source, cached = source_dataset(dataset, train, settings.image_size, target, shuffle_seed=settings.seed)
    val_source, _ = source_dataset(dataset, val, settings.image_size, target)
    train_batches = training_dataset(train_source, len(train) if cached else min(len(train), 64), settings.batch_size,
                                     settings.augment, settings.seed, repeat=settings.steps_per_epoch is not None)
    return (train_batches, evaluation_dataset(val_source, settings.batch_size)), cached


def _parser() -> argparse.ArgumentParser:
    parser = make_parser("semseg-train", description=__doc__.splitlines()[0])
    add_dataset_arguments(parser)
    parser.add_argument("--split", required=True, help="split JSON; made (80:20, --seed) if it does not exist")
    parser.add_argument("--out", required=True, help="output folder of this training run")
    add_arguments(parser, TrainSettings)
    parser.add_argument("--resume", action="store_true", help="continue an unfinished run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    from data.split import load_or_make_split, make_split

    from .distribute import is_chief

    args = _parser().parse_args(argv)
    settings = from_arguments(TrainSettings, args).checked()
    if is_chief():
        lock_output_folder(args.out)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    dataset = open_dataset(args)
    if is_chief() or Path(args.split).exists():
        split = load_or_make_split(args.split, dataset.names, seed=args.seed, source=str(args.data))
    else:
        split = make_split(dataset.names, seed=args.seed, source=str(args.data))
    result = train_model(args.model, dataset, split, args.out, settings=settings, resume=args.resume,
                         overwrite=args.overwrite, quiet=args.quiet, split_path=args.split)
    print(summary(result, args.out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, resume_hint="continue with --resume")


if __name__ == "__main__":
    sys.exit(main())
