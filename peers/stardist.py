"""StarDist 2D (TensorFlow) as a peer: trained on the run's split from random or released weights, COCO results out.

Input: StarDist's models take one grey channel; an H x W x 3 image in [0, 1] becomes the mean
of its channels, normalised per image as StarDist's examples do (csbdeep ``normalize(x, 1, 99.8)``),
and, with ``image_size``, resized to ``image_size`` x ``image_size`` (bilinear; labels nearest).
Prediction shows a new image at that same scale (``predict_instances(scale=...)``), so the
polygons come back at native size.

Training is ``StarDist2D.train(..., epochs=1, steps_per_epoch=S)`` once per epoch of the
project's life cycle (``data.lifecycle``), with StarDist's own checkpoint, ReduceLROnPlateau and
TensorBoard callbacks off: the run folder is also the StarDist model folder (``config.json``,
``weights_best.h5`` by validation loss, ``weights_last.h5``, ``thresholds.json``) and
``optimizer_last.npz`` keeps Adam's state, the learning rate and the plateau counters, so a
resumed run continues where it stopped. Each epoch draws its patches from numpy seeded by
(seed, epoch); the validation loss is on fixed crops that cover the validation images.
After training, the probability and NMS thresholds are tuned on the training images by
``StarDist2D.optimize_thresholds`` (the validation images are the comparison's test images).

TensorFlow is imported inside functions only, with ``TF_USE_LEGACY_KERAS=1`` set first when
``tf-keras`` is installed (TensorFlow >= 2.16: csbdeep then builds on Keras 2, as on TF 2.15).
The settings class and its checks are in ``peers.stardist_settings``, the image handling in
``peers.stardist_images``; both are re-exported here.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from data.errors import MscsegError
from data.lifecycle import BUDGET_REACHED, FINISHED, EpochSteps, RunControl, RunSpec, TrainingRun, open_run, run_epochs
from data.outputs import check_can_write, write_json
from data.run_record import HISTORY_CSV, RUN_JSON, read_record

from . import PeerError, labels_to_results, require_package, write_results
from .stardist_images import (  # noqa: F401  (re-exported)
    _resized, _scale, _starts, _training_arrays, augmenter, network_input, patch_side, validation_crops,
)
from .stardist_settings import (  # noqa: F401  (re-exported: peers.stardist is the peer's module)
    LR_SCHEDULES, PERCENTILES, RELEASED, RELEASED_SHAPE, STARDIST_RESUME_MUST_MATCH, StardistSettings, _grid_pair,
    weights_source,
)

NAME = "stardist"
SCORE_SOURCE = ("StarDist's object probability: the network's probability at the grid pixel whose polygon survived "
                "non-maximum suppression (predict_instances details['prob'])")
WEIGHTS_BEST, WEIGHTS_LAST, OPTIMIZER_LAST = "weights_best.h5", "weights_last.h5", "optimizer_last.npz"
CONFIG_JSON, THRESHOLDS_JSON = "config.json", "thresholds.json"
RUN_FILES = (RUN_JSON, HISTORY_CSV, CONFIG_JSON, WEIGHTS_BEST, WEIGHTS_LAST, OPTIMIZER_LAST, THRESHOLDS_JSON)
DEFAULT_THRESHOLDS = {"prob": 0.5, "nms": 0.4}
NMS_CANDIDATES = (0.3, 0.4, 0.5)
TUNING_IOUS = (0.3, 0.5, 0.7)
LOSSES = ("loss", "prob_loss", "dist_loss")
SETTINGS = StardistSettings


# ---------------------------------------------------------------- TensorFlow, StarDist and the released weights

def versions() -> dict[str, str]:
    """Versions of the packages this peer runs on (from package metadata; nothing is imported)."""
    from importlib import metadata

    found = {}
    for name in ("stardist", "csbdeep", "tensorflow", "tensorflow-cpu", "tf-keras", "keras", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


@functools.cache
def _tensorflow():
    """``tensorflow`` with ``tf.keras`` = Keras 2: ``TF_USE_LEGACY_KERAS=1`` before the import when tf-keras is installed
    (TensorFlow >= 2.16), unset when it is not (TensorFlow 2.15's own Keras 2)."""
    if "tensorflow" not in sys.modules:
        if importlib.util.find_spec("tf_keras") is not None:
            os.environ["TF_USE_LEGACY_KERAS"] = "1"
        else:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)  # TF 2.15 would look for tf-keras instead of its own Keras 2
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if importlib.util.find_spec("triton") is not None:
            with contextlib.suppress(Exception):
                import triton  # noqa: F401  (TensorFlow >= 2.19 loaded first makes a later triton import crash)
    try:
        import tensorflow as tf
    except ImportError as error:
        raise PeerError(f"peer 'stardist' needs TensorFlow, which cannot be imported here ({error}); it is pinned in "
                        "requirements/paper.txt and requirements/current.txt") from None
    keras_version = str(getattr(tf.keras, "__version__", None) or getattr(sys.modules.get(tf.keras.__name__.split(".")[0]),
                                                                          "__version__", "") or "")
    if keras_version and not keras_version.startswith("2."):
        raise PeerError(f"tf.keras is Keras {keras_version}: StarDist needs Keras 2 (install tf-keras and set "
                        "TF_USE_LEGACY_KERAS=1 before TensorFlow is imported)")
    return tf


@functools.cache
def _stardist():
    """The ``stardist`` package, imported after TensorFlow's environment is set (csbdeep's Keras notice hidden)."""
    _tensorflow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = require_package(NAME)
        import stardist.models  # noqa: F401
    return module


def _select_device(device: str | None) -> str:
    """'cpu' hides the GPUs from TensorFlow; None/'auto'/'cuda'/'gpu' keep TensorFlow's choice. Returns what was used."""
    tf = _tensorflow()
    if device is not None and str(device).lower() == "cpu":
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.set_visible_devices([], "GPU")
        return "cpu"
    if device not in (None, "auto") and not str(device).lower().startswith(("cuda", "gpu")):
        raise PeerError(f"stardist: device must be cpu, cuda, gpu or auto, got '{device}'")
    gpus = tf.config.list_logical_devices("GPU")
    if device not in (None, "auto") and not gpus:
        raise PeerError(f"stardist: device '{device}' asked for but TensorFlow sees no GPU")
    return "gpu" if gpus else "cpu"


def _reproducible(seed: int, deterministic: bool) -> dict[str, Any]:
    """Seed Python, numpy and TensorFlow; op determinism on or off; what run.json records."""
    tf = _tensorflow()
    tf.keras.utils.set_random_seed(int(seed))
    experimental = tf.config.experimental
    if deterministic:
        experimental.enable_op_determinism()
    elif hasattr(experimental, "disable_op_determinism"):
        experimental.disable_op_determinism()
    threads = tf.config.threading
    return {"deterministic": bool(deterministic), "tf_op_determinism": bool(deterministic), "seed": int(seed),
            "tf_intra_op_threads": threads.get_intra_op_parallelism_threads() or f"TensorFlow's default ({os.cpu_count()} cores)",
            "tf_inter_op_threads": threads.get_inter_op_parallelism_threads() or f"TensorFlow's default ({os.cpu_count()} cores)",
            "cpu_count": os.cpu_count()}


def keras_cache_dir() -> Path:
    """Keras' download cache: ``$KERAS_HOME`` or ``~/.keras``."""
    return Path(os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")))


def released_folder(name: str) -> Path:
    """Where csbdeep keeps (or would keep) a released StarDist 2D model: ``<Keras cache>/models/StarDist2D/<name>/``."""
    return keras_cache_dir() / "models" / "StarDist2D" / name


def released_message(name: str) -> str:
    return (f"StarDist's released model {name} not found and cannot be downloaded: put {name}.zip (from {RELEASED[name]}) "
            f"in {released_folder(name)}/ (Keras' cache; set KERAS_HOME to move it), or run with weights none "
            "(random initialisation) or weights PATH (a weights .h5 file or a StarDist run folder)")


def fetch_released(name: str) -> Path:
    """The weights file of released model ``name``, downloaded and unpacked by csbdeep when missing; ``PeerError`` offline."""
    _stardist()
    from csbdeep.models import pretrained
    from stardist.models import StarDist2D

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            folder = Path(pretrained.get_model_folder(StarDist2D, name))
    except Exception:  # noqa: BLE001 - any network, disk or archive failure means "not available"
        folder = None
    weights = folder / WEIGHTS_BEST if folder is not None else None
    if weights is None or not weights.is_file():
        raise PeerError(released_message(name))
    return weights


def _initial_weights(source: str) -> Path | None:
    """The .h5 file a new run starts from (None: random), checked before anything is written."""
    if source == "none":
        return None
    if source in RELEASED:
        return fetch_released(source)
    path = Path(source)
    if path.is_dir():
        path = path / WEIGHTS_BEST
    if not path.is_file():
        raise PeerError(f"{path}: stardist weights file not found (weights: a .h5 file or a StarDist run folder)")
    return path


# ---------------------------------------------------------------- training

@contextlib.contextmanager
def _muted(quiet: bool) -> Iterator[None]:
    """StarDist's and Keras' printing and warnings off (``quiet``), or warnings alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if quiet:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        else:
            yield


def _model_config(settings: StardistSettings, patch: int):
    from stardist.models import Config2D

    return Config2D(n_rays=settings.n_rays, grid=tuple(settings.grid), n_channel_in=1, unet_n_depth=settings.unet_n_depth,
                    unet_n_filter_base=settings.unet_n_filter_base, unet_batch_norm=settings.unet_batch_norm,
                    train_patch_size=(patch, patch),
                    train_batch_size=settings.batch_size, train_learning_rate=settings.lr, train_epochs=settings.epochs,
                    train_steps_per_epoch=settings.steps_per_epoch, train_tensorboard=False, train_reduce_lr=None,
                    train_checkpoint=None, train_checkpoint_last=None, train_checkpoint_epoch=None)


def _stardist_model(config, run_dir: Path | None):
    """``StarDist2D``: a new network that touches no file (``run_dir`` None), or the one in the model folder ``run_dir``."""
    from stardist.models import StarDist2D

    with _muted(True):
        if run_dir is None:
            return StarDist2D(config, name=NAME, basedir=None)
        run_dir = run_dir.resolve()
        return StarDist2D(None, name=run_dir.name, basedir=str(run_dir.parent))


@dataclass
class OptimizerState:
    """What ``optimizer_last.npz`` keeps beside ``weights_last.h5``: the learning rate and ReduceLROnPlateau's counters."""

    lr: float
    plateau_best: float = math.inf
    plateau_wait: int = 0


def save_weights(model, path: Path) -> None:
    """HDF5 weights, written under a temporary name and renamed."""
    partial = path.with_name(path.name + ".partial")
    model.keras_model.save_weights(str(partial), save_format="h5")
    os.replace(partial, path)


def save_optimizer(model, state: OptimizerState, epoch: int, path: Path) -> None:
    """Adam's variables (iterations, moments), the learning rate and the plateau counters, atomically."""
    variables = model.keras_model.optimizer.variables
    arrays = {f"var_{i}": v.numpy() for i, v in enumerate(variables() if callable(variables) else variables)}
    partial = path.with_name(path.stem + ".partial.npz")
    np.savez(partial, epoch=epoch, lr=state.lr, plateau_best=state.plateau_best, plateau_wait=state.plateau_wait, **arrays)
    os.replace(partial, path)


def restore_optimizer(model, path: Path) -> OptimizerState:
    """Build Adam's variables and set them from ``path`` (``save_optimizer``); the saved lr and plateau counters."""
    optimizer = model.keras_model.optimizer
    optimizer.build(model.keras_model.trainable_variables)
    variables = optimizer.variables() if callable(optimizer.variables) else optimizer.variables
    with np.load(path) as saved:
        arrays = [saved[f"var_{i}"] for i in range(sum(1 for key in saved.files if key.startswith("var_")))]
        if len(arrays) != len(variables) or any(a.shape != tuple(v.shape) for a, v in zip(arrays, variables)):
            raise PeerError("optimizer state does not fit this network; pass --overwrite to start again", path)
        for variable, array in zip(variables, arrays):
            variable.assign(array)
        state = OptimizerState(float(saved["lr"]), float(saved["plateau_best"]), int(saved["plateau_wait"]))
    optimizer.learning_rate.assign(state.lr)
    return state


def plateau_step(state: OptimizerState, monitored: float, factor: float, patience: int) -> None:
    """Keras ReduceLROnPlateau (mode min, min_delta 0, no cooldown) after one epoch, on ``state``."""
    if monitored < state.plateau_best:
        state.plateau_best, state.plateau_wait = float(monitored), 0
        return
    state.plateau_wait += 1
    if state.plateau_wait >= patience:
        state.lr, state.plateau_wait = state.lr * factor, 0


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (1-based) under a per-epoch cosine decay from ``lr``."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / max(epochs, 1)))


def run_spec(settings: StardistSettings, split_record: dict) -> RunSpec:
    return RunSpec(NAME, "StarDist2D", settings.to_record(), split_record, settings.epochs, STARDIST_RESUME_MUST_MATCH, RUN_FILES,
                   resume_files=(CONFIG_JSON, WEIGHTS_LAST, OPTIMIZER_LAST), max_minutes=settings.max_minutes)


def _geometry(dataset, names: Sequence[str], image_size: int | None) -> dict:
    from data.geometry import training_geometry

    if image_size:
        return training_geometry(dataset, names, image_size)
    geometry = training_geometry(dataset, names, 1)
    return {**geometry, "resize": "none (native size)", "image_size": None, "scale_y": 1.0, "scale_x": 1.0}


def train(settings: StardistSettings | None, dataset, split: dict, out_dir: str | Path,
          control: RunControl | None = None) -> dict:
    """Train StarDist 2D on ``split["train"]`` (validation loss on ``split["val"]``); returns run.json's content.

    The run folder's life cycle (refusals, resume from ``weights_last.h5`` and ``optimizer_last.npz``
    with the same settings and split, overwrite, time budget, status words) is ``data.lifecycle``'s.
    Bad settings, a missing weights file or released model offline, or a split without training or
    validation images raise ``PeerError`` before anything is written.
    """
    control = control or RunControl()
    settings = (settings or StardistSettings()).checked()
    out_dir = Path(out_dir)
    train_names, val_names = list(split.get("train", [])), list(split.get("val", []))
    where = control.split_path or "split"
    if not train_names:
        raise PeerError(f"{where}: the split has no training images")
    if not val_names:
        raise PeerError(f"{where}: the split has no validation images (StarDist picks its best epoch by validation loss)")
    split_record = {"path": str(control.split_path) if control.split_path else None, "seed": split.get("seed"),
                    "train": train_names, "val": val_names}
    run = open_run(out_dir, run_spec(settings, split_record), control.resume, control.overwrite)
    if run.done and (not settings.optimize_thresholds or (out_dir / THRESHOLDS_JSON).is_file()):
        return run.record.to_dict()
    resuming = run.start_epoch > 0
    initial = None if resuming else _initial_weights(settings.weights)
    _stardist()
    reproducibility = _reproducible(settings.seed, settings.deterministic)
    device = _select_device(None)
    x_train, y_train = _training_arrays(dataset, train_names, settings.image_size)
    x_val, y_val = _training_arrays(dataset, val_names, settings.image_size)
    patch = patch_side(settings, [x.shape for x in x_train + x_val])
    val_crops = validation_crops(x_val, y_val, patch)
    model = _stardist_model(_model_config(settings, patch), None)
    for layer in model.keras_model.layers:
        if hasattr(layer, "moving_variance"):
            layer.momentum = float(settings.batchnorm_momentum)
    with _muted(True):
        model.prepare_for_training()
    state = OptimizerState(settings.lr)
    if resuming:
        model.keras_model.load_weights(str(out_dir / WEIGHTS_LAST))
        state = restore_optimizer(model, out_dir / OPTIMIZER_LAST)
    elif initial is not None:
        try:
            model.keras_model.load_weights(str(initial))
        except (ValueError, OSError) as error:
            raise PeerError(f"these weights do not fit a StarDist network with these settings (n_rays, grid, unet_*): {error}",
                            initial) from None
    run.start({
        "task": "instance segmentation (StarDist 2D: star-convex polygons)",
        "weights_source": settings.weights if settings.weights in RELEASED or settings.weights == "none"
        else str(initial or settings.weights),
        "peer_versions": versions(), "n_train": len(train_names), "n_val": len(val_names), "device": device,
        "patch_size_used": patch, "validation": f"{len(val_crops[0])} fixed {patch} x {patch} crops covering the validation images",
        "files": {"best": WEIGHTS_BEST, "last": WEIGHTS_LAST, "optimizer": OPTIMIZER_LAST, "config": CONFIG_JSON,
                  "thresholds": THRESHOLDS_JSON, "history": HISTORY_CSV},
        "best_by": "val_loss", "reproducibility": reproducibility,
        "geometry": _geometry(dataset, train_names, settings.image_size),
    })
    write_json(out_dir / CONFIG_JSON, vars(model.config))
    if not run.done:
        (out_dir / THRESHOLDS_JSON).unlink(missing_ok=True)
        run.record.details.pop("thresholds", None)
        run_epochs(run, epoch_steps(settings, model, state, (x_train, y_train), val_crops, run, control.quiet),
                   show=not control.quiet)
    final = run.previous.status if run.done else run.status
    if settings.optimize_thresholds and final in (FINISHED, BUDGET_REACHED):
        with run.guard():
            count = settings.threshold_images or len(x_train)
            tune_thresholds(model, out_dir, x_train[:count], y_train[:count], run, final, control.quiet)
    return run.record.to_dict()


def epoch_steps(settings: StardistSettings, model, state: OptimizerState, train_data: tuple, val_data: tuple,
                run: TrainingRun, quiet: bool) -> EpochSteps:
    """StarDist's "train one epoch" (``StarDist2D.train`` for one epoch), the lr schedule and the checkpoint."""
    history: dict[int, dict] = {}
    augment = augmenter if settings.augment else None

    def train_epoch(epoch: int) -> dict[str, float]:
        if settings.lr_schedule == "cosine":
            state.lr = cosine_lr(settings.lr, epoch, settings.epochs)
        model.keras_model.optimizer.learning_rate.assign(state.lr)
        np.random.seed([settings.seed, epoch])
        with _muted(quiet):
            fit = model.train(*train_data, validation_data=val_data, augmenter=augment, epochs=1,
                              steps_per_epoch=settings.steps_per_epoch)
        values = {key: float(value[-1]) for key, value in fit.history.items()}
        if not all(math.isfinite(values.get(key, math.nan)) for key in ("loss", "val_loss")):
            raise PeerError(f"stardist: training diverged at epoch {epoch} (loss {values.get('loss')}); lower lr "
                            f"({WEIGHTS_LAST} keeps the last good epoch)", run.out_dir)
        history[epoch] = values
        return {key: values[key] for key in LOSSES}

    def evaluate(epoch: int) -> dict[str, float]:
        return {key: history[epoch][f"val_{key}"] for key in LOSSES}

    def row(epoch: int, train: dict, val: dict | None, seconds: float) -> dict:
        return {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()}, **{f"val_{k}": v for k, v in (val or {}).items()},
                "lr": float(model.keras_model.optimizer.learning_rate.numpy()), "time_s": round(seconds, 3)}

    def adjust(epoch: int, monitored: float) -> None:
        if settings.lr_schedule == "plateau":
            plateau_step(state, monitored, settings.plateau_factor, settings.plateau_patience)

    def save(epoch: int, improved: bool, monitored: float) -> None:
        if improved:
            save_weights(model, run.out_dir / WEIGHTS_BEST)
        save_weights(model, run.out_dir / WEIGHTS_LAST)
        save_optimizer(model, state, epoch, run.out_dir / OPTIMIZER_LAST)

    return EpochSteps(train=train_epoch, evaluate=evaluate, save=save, row=row, adjust=adjust)


def tune_thresholds(model, out_dir: Path, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], run: TrainingRun,
                    status: str, quiet: bool) -> dict[str, float]:
    """StarDist's ``optimize_thresholds`` with the best epoch's weights on the training images; thresholds.json and run.json."""
    model.keras_model.load_weights(str(out_dir / WEIGHTS_BEST))
    with _muted(quiet):
        found = model.optimize_thresholds(list(images), list(labels), nms_threshs=list(NMS_CANDIDATES),
                                          iou_threshs=list(TUNING_IOUS),
                                          predict_kwargs={"n_tiles": (1, 1), "show_tile_progress": False},
                                          optimize_kwargs={"verbose": 0 if quiet else 1}, save_to_json=False)
    thresholds = {"prob": float(found["prob"]), "nms": float(found["nms"])}
    write_json(out_dir / THRESHOLDS_JSON, thresholds)
    run.record.details["thresholds"] = {**thresholds, "tuned_on": f"the {len(images)} training images",
                                        "best_epoch": run.record.best_epoch}
    run.stop(status)
    return thresholds


# ---------------------------------------------------------------- prediction

@dataclass
class LoadedStardist:
    """A trained run ready to predict: the ``StarDist2D`` model (best weights), its thresholds and training scale."""

    model: Any
    prob_thresh: float
    nms_thresh: float
    image_size: int | None
    run_dir: Path
    weights: str
    details: dict = field(default_factory=dict)


def _thresholds(run_dir: Path) -> tuple[dict[str, float], str]:
    """(prob and nms thresholds, where they came from): thresholds.json, else StarDist's defaults."""
    path = run_dir / THRESHOLDS_JSON
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            return {"prob": float(saved["prob"]), "nms": float(saved["nms"])}, str(path)
        except (ValueError, KeyError, TypeError) as error:
            raise PeerError(f"not a StarDist thresholds file ({error}); delete it to use 0.5 and 0.4", path) from None
    return dict(DEFAULT_THRESHOLDS), "StarDist's defaults (no thresholds.json)"


def load(run_dir: str | Path, device: str | None = None) -> LoadedStardist:
    """The run's best weights (``weights_best.h5``, else ``weights_last.h5``) and thresholds (``thresholds.json``, else 0.5 / 0.4)."""
    run_dir = Path(run_dir)
    try:
        record = read_record(run_dir)
    except MscsegError as error:
        raise PeerError(error.problem, error.path) from None
    if record.trainer != NAME:
        raise PeerError(f"holds a {record.trainer} run, not a stardist run", run_dir / RUN_JSON)
    weights = next((run_dir / name for name in (WEIGHTS_BEST, WEIGHTS_LAST) if (run_dir / name).is_file()), None)
    if weights is None or not (run_dir / CONFIG_JSON).is_file():
        raise PeerError(f"missing {CONFIG_JSON if weights else WEIGHTS_BEST}: the run has no finished epoch", run_dir)
    _stardist()
    _select_device(device)
    model = _stardist_model(None, run_dir)
    with _muted(True):
        model.keras_model.load_weights(str(weights))
    thresholds, source = _thresholds(run_dir)
    model.thresholds = thresholds
    return LoadedStardist(model, thresholds["prob"], thresholds["nms"], record.settings.get("image_size"), run_dir,
                          str(weights), {"thresholds_from": source, "weights_source": record.details.get("weights_source")})


def predict_labels(model: LoadedStardist, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image H x W x 3 float32 in [0, 1] -> (labels H x W int32, 0 background, 1..N; scores N float64).

    StarDist numbers polygon i of ``details`` as label i + 1 (``polygons_to_label`` paints them in
    ascending probability, so a likelier polygon covers a less likely one where they overlap);
    the score of label k is ``details['prob'][k - 1]``.
    """
    x = network_input(image)
    with _muted(True):
        labels, details = model.model.predict_instances(x, prob_thresh=model.prob_thresh, nms_thresh=model.nms_thresh,
                                                        scale=_scale(x.shape, model.image_size), show_tile_progress=False)
    return np.asarray(labels, dtype=np.int32), np.asarray(details["prob"], dtype=np.float64).reshape(-1)


def _ground_truth(gt: dict | str | Path) -> dict:
    if isinstance(gt, dict):
        return gt
    try:
        return json.loads(Path(gt).read_text())
    except (OSError, ValueError) as error:
        raise PeerError(f"cannot read the COCO ground truth ({error})", gt) from None


def predict_to_coco(run_dir: str | Path, dataset, names: Sequence[str], gt: dict | str | Path, out_json: str | Path,
                    device: str | None = None, overwrite: bool = False, max_detections: int = 300, quiet: bool = True) -> Path:
    """Predict ``names`` with a trained run and write COCO results (RLE) and ``<out>.meta.json`` to ``out_json``.

    Image ids come from ``gt`` (a COCO dict or its path) by ``file_name`` == sample name; at
    most ``max_detections`` per image, highest scores first.
    """
    out_json = Path(out_json)
    check_can_write(out_json, overwrite)
    truth = _ground_truth(gt)
    try:
        ids = {image["file_name"]: int(image["id"]) for image in truth["images"]}
    except (KeyError, TypeError, ValueError) as error:
        raise PeerError(f"not a COCO ground truth (images need file_name and id: {error})",
                        None if isinstance(gt, dict) else gt) from None
    missing = [name for name in names if name not in ids]
    if missing:
        raise PeerError(f"{len(missing)} image(s) not in the ground truth: {', '.join(missing[:10])}",
                        None if isinstance(gt, dict) else gt)
    loaded = load(run_dir, device)
    from tqdm.auto import tqdm

    results: list[dict] = []
    for sample in tqdm(dataset.subset(list(names)), total=len(names), desc=NAME, disable=quiet):
        labels, scores = predict_labels(loaded, sample.image)
        results.extend(labels_to_results(ids[sample.name], labels, scores, max_detections))
    meta = {"method": NAME, "score_source": SCORE_SOURCE, "versions": versions(), "weights": loaded.details["weights_source"],
            "run_dir": str(run_dir), "weights_file": Path(loaded.weights).name,
            "thresholds": {"prob": loaded.prob_thresh, "nms": loaded.nms_thresh, "from": loaded.details["thresholds_from"]}}
    return write_results(out_json, results, meta)
