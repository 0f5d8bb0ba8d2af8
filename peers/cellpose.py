"""Cellpose 3 (``cellpose`` 3.1.1.3, torch) as a peer: trained on the run's split, written as COCO results.

Training is Cellpose's own recipe taken apart so that ``data.lifecycle`` drives it one
epoch at a time (``cellpose.train.train_seg`` runs every epoch in one call): the flows
are made from the label maps once per run (``dynamics.labels_to_flows``), each epoch draws
Cellpose's random rotations, flips, rescales and crops (``transforms.random_rotate_and_resize``)
from the run's seed, the loss is ``train._loss_fn_seg`` (MSE on 5 x flows + BCE on the cell
probability), the optimiser AdamW (or SGD) with Cellpose's learning-rate schedule. Each epoch
saves ``last.pt`` (network and optimiser) and, when the validation loss improves, ``best.pt``:
a plain Cellpose model file (``CellposeModel(pretrained_model="best.pt")`` opens it).

Diameter rule (Cellpose's): a training image is rescaled so that its median cell diameter
(``utils.diameters``: 2 sqrt(area / pi)) becomes ``diam_mean``; run.json records the mean of the
training images' medians (Cellpose's ``diam_labels``) and prediction rescales every image by
``diam_mean / diameter``, so new images of the training magnification need no diameter.
Input: the mean of the RGB channels (Cellpose's ``channels=[0, 0]``), percentile-normalised per
image (1-99, ``transforms.normalize_img``). cellpose and torch are imported inside functions only.
The settings class and its checks are in ``peers.cellpose_settings``, the detection scores in
``peers.cellpose_scores``; both are re-exported here.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from data.lifecycle import EpochSteps, RunControl, RunSpec, default_row, open_run, run_epochs
from data.outputs import check_can_write
from data.run_record import HISTORY_CSV, RUN_JSON, read_record

from . import PeerError, labels_to_results, require_package, write_results
from .cellpose_scores import (  # noqa: F401  (re-exported: peers.cellpose is the peer's module)
    _mask_means, _sigmoid, detection_scores, flow_errors, mean_probability, probability_quantile, score_candidates,
)
from .cellpose_settings import (  # noqa: F401  (re-exported)
    CELLPOSE_RESUME_MUST_MATCH, MIN_DIAMETER, OPTIMIZERS, PREDICT_SETTINGS, RELEASED, CellposeSettings, weights_source,
)

NAME = "cellpose"
SCORE_SOURCE = ("Cellpose: the mean, over the mask's pixels, of the sigmoid of the network's cell-probability logit "
                "(CellposeModel.eval's flows[2])")
MODEL_URL = "https://www.cellpose.org/models"
NUCLEI_DIAMETER = 17.0
N_CHANNELS = 2
NBASE = (32, 64, 128, 256)
RUN_FILES = (RUN_JSON, HISTORY_CSV, "best.pt", "last.pt")
VALIDATION_SEED = 42
"""Cellpose validates on crops drawn with ``np.random.seed(42)``: the same crops every epoch."""
SETTINGS = CellposeSettings


# ---------------------------------------------------------------- packages, device, released weights

def versions() -> dict[str, str]:
    """Installed versions of cellpose, torch and numpy (package metadata; nothing imported)."""
    from importlib import metadata

    found = {}
    for name in ("cellpose", "torch", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def _cellpose():
    """The cellpose package with the modules this peer uses loaded (``PeerUnavailable`` when missing)."""
    cellpose = require_package(NAME)
    import cellpose.dynamics  # noqa: F401
    import cellpose.models  # noqa: F401
    import cellpose.resnet_torch  # noqa: F401
    import cellpose.train  # noqa: F401
    import cellpose.transforms  # noqa: F401
    import cellpose.utils  # noqa: F401

    return cellpose


def torch_device(device: str | None):
    """The torch device: 'cpu', 'cuda[:N]', or None / 'auto' (cuda when available)."""
    import torch

    text = "auto" if device is None else str(device).lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu" or text.startswith("cuda"):
        if text.startswith("cuda") and not torch.cuda.is_available():
            raise PeerError(f"cellpose: device '{device}' asked for but torch sees no CUDA GPU")
        return torch.device(text)
    raise PeerError(f"cellpose: device must be cpu, cuda[:N] or auto, got '{device}'")


def _reproducible(deterministic: bool) -> dict[str, Any]:
    """torch's determinism switches for ``deterministic`` (as ``torch_instseg.reproducible``); what run.json records."""
    import torch

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = not deterministic and torch.cuda.is_available()
    return {"deterministic": bool(deterministic), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}


def models_dir() -> Path:
    """Cellpose's model cache: ``$CELLPOSE_LOCAL_MODELS_PATH`` or ``~/.cellpose/models`` (read when called)."""
    folder = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(folder).expanduser() if folder else Path.home() / ".cellpose" / "models"


def released_file(name: str) -> str:
    """The file name of a released model (``cellpose.models.model_path``'s rule)."""
    return f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name


def released_message(name: str) -> str:
    file = released_file(name)
    return (f"Cellpose model '{name}' not found and cannot be downloaded: put {file} (from {MODEL_URL}/{file}) in "
            f"{models_dir()}/ (Cellpose's cache; set CELLPOSE_LOCAL_MODELS_PATH to move it), or train from random "
            "weights with weights: none")


def _download(url: str, destination: Path) -> None:
    from cellpose import utils

    destination.parent.mkdir(parents=True, exist_ok=True)
    utils.download_url_to_file(url, str(destination), progress=True)


def fetch_released(name: str) -> Path:
    """The released model file in Cellpose's cache, downloaded once when missing; ``PeerError`` offline."""
    path = models_dir() / released_file(name)
    if not path.is_file():
        try:
            _download(f"{MODEL_URL}/{released_file(name)}", path)
        except Exception:  # noqa: BLE001 - any network or disk failure means "not available"
            path.unlink(missing_ok=True)
    if not path.is_file():
        raise PeerError(released_message(name))
    return path


def _state_dict(path: Path) -> dict:
    """A Cellpose 3 network's state dict from a model file (``PeerError`` naming the file when it is not one)."""
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a corrupt or foreign file
        raise PeerError(f"not a Cellpose model file ({type(error).__name__}: {error})", path) from None
    if isinstance(state, dict) and "net" in state:
        state = state["net"]
    if not isinstance(state, dict) or "output.2.weight" not in state:
        raise PeerError("not a Cellpose 3 model file (no output.2.weight)", path)
    if "W2" in state:
        raise PeerError("a Cellpose 4 model file; this peer runs Cellpose 3 networks", path)
    return state


def build_net(diam_mean: float, device):
    """Cellpose 3's res-U-Net (``CellposeModel``'s: 2 input channels, 3 outputs, nbase 32-256), without MKL-DNN."""
    from cellpose.resnet_torch import CPnet

    return CPnet([N_CHANNELS, *NBASE], 3, sz=3, mkldnn=False, max_pool=True, diam_mean=float(diam_mean)).to(device)


def initial_state(source: str) -> tuple[dict | None, float | None, str]:
    """(state dict or None for random weights, the file's diam_mean or None, what run.json records)."""
    if source == "none":
        return None, None, "none (random initialisation)"
    path = fetch_released(source) if source in RELEASED else Path(source)
    state = _state_dict(path)
    diam = NUCLEI_DIAMETER if source == "nuclei" else (30.0 if source in RELEASED else float(state["diam_mean"].reshape(-1)[0]))
    return state, diam, f"{source} ({path})"


# ---------------------------------------------------------------- data

def network_input(image: np.ndarray) -> np.ndarray:
    """2 x H x W float32: the grey image (mean of RGB), 1-99 percentile normalised, and an empty second channel.

    The same as ``CellposeModel.eval(image, channels=[0, 0], channel_axis=-1)`` makes before its network.
    """
    from cellpose import transforms

    x = transforms.convert_image(np.asarray(image, np.float32), [0, 0], channel_axis=-1, nchan=N_CHANNELS)
    return transforms.normalize_img(x, axis=-1).transpose(2, 0, 1).copy()


@dataclass
class TrainingData:
    """Images (2 x H x W), targets (3 x H x W: cell probability, Y flow, X flow) and each image's median cell diameter (px)."""

    images: list[np.ndarray]
    targets: list[np.ndarray]
    diameters: np.ndarray
    names: list[str]


def prepare(dataset, names: Sequence[str], min_masks: int = 0) -> TrainingData:
    """Cellpose's once-per-run preprocessing (flows from labels, diameters) of ``names``; images with fewer
    than ``min_masks`` cells are left out."""
    import torch
    from cellpose import dynamics, utils

    images, targets, diameters, kept = [], [], [], []
    for sample in dataset.subset(list(names)):
        labels = np.asarray(sample.labels, np.int32)
        diameter, each = utils.diameters(labels)
        if len(each) < min_masks:
            continue
        flows = dynamics.labels_to_flows([labels.copy()], device=torch.device("cpu"))[0]
        images.append(network_input(sample.image))
        targets.append(np.ascontiguousarray(flows[1:], np.float32))
        diameters.append(max(float(diameter), MIN_DIAMETER))
        kept.append(sample.name)
    return TrainingData(images, targets, np.asarray(diameters, np.float64), kept)


@contextlib.contextmanager
def numpy_seeded(*seed: int) -> Iterator[None]:
    """numpy's global generator seeded with ``seed`` inside (Cellpose's augmentation draws from it), restored after."""
    state = np.random.get_state()
    np.random.seed(np.random.SeedSequence(list(seed)).generate_state(1)[0])
    try:
        yield
    finally:
        np.random.set_state(state)


def crops(data: TrainingData, indices: Sequence[int], diam_mean: float, settings: CellposeSettings) -> tuple[np.ndarray, np.ndarray]:
    """Cellpose's augmentation of ``indices``: (B x 2 x bsize x bsize images, B x 3 x bsize x bsize targets); each image
    rescaled so that its median cell diameter becomes ``diam_mean``."""
    from cellpose import transforms

    rescale = data.diameters[list(indices)] / diam_mean
    imgi, lbl = transforms.random_rotate_and_resize([data.images[i] for i in indices], Y=[data.targets[i] for i in indices],
                                                    rescale=rescale, scale_range=settings.scale_range,
                                                    xy=(settings.bsize, settings.bsize))[:2]
    return imgi, lbl


def learning_rates(lr: float, epochs: int) -> np.ndarray:
    """Cellpose's schedule (``train_seg``): the learning rate of epoch e (1-based) at index e - 1."""
    rates = np.append(np.linspace(0, lr, 10), lr * np.ones(max(0, epochs - 10)))
    if epochs > 300:
        rates = rates[:-100]
        for _ in range(10):
            rates = np.append(rates, rates[-1] / 2 * np.ones(10))
    elif epochs > 100:
        rates = rates[:-50]
        for _ in range(10):
            rates = np.append(rates, rates[-1] / 2 * np.ones(5))
    return rates


# ---------------------------------------------------------------- training

def run_spec(settings: CellposeSettings, split_record: dict) -> RunSpec:
    return RunSpec(NAME, NAME, settings.to_record(), split_record, settings.epochs, CELLPOSE_RESUME_MUST_MATCH, RUN_FILES,
                   resume_files=("last.pt",), max_minutes=settings.max_minutes)


def _save(path: Path, obj: Any) -> None:
    import torch

    partial = path.with_name(path.name + ".partial")
    torch.save(obj, str(partial))
    os.replace(partial, path)


def _geometry(dataset, names: Sequence[str], diam_mean: float, diameter: float) -> dict:
    """Cellpose's rescale as ``data.geometry`` records one: network pixels per native pixel, cell areas (native px)."""
    from collections import Counter

    from data.geometry import AREA_PERCENTILES, cell_areas

    sizes: Counter = Counter()
    areas = []
    for sample in dataset.subset(list(names)):
        sizes[sample.labels.shape] += 1
        areas.append(cell_areas(sample.labels))
    every = np.concatenate(areas) if areas else np.zeros(0)
    (height, width), _ = sizes.most_common(1)[0]
    scale = diam_mean / diameter
    stats: dict[str, Any] = {"cells": int(every.size)}
    if every.size:
        stats.update({f"p{q}": float(np.percentile(every, q)) for q in AREA_PERCENTILES})
    return {"resize": "Cellpose's diameter rule: images scaled by diam_mean / cell diameter", "image_size": None,
            "native_height": int(height), "native_width": int(width),
            "native_sizes": {f"{w}x{h}": n for (h, w), n in sorted(sizes.items())},
            "scale_y": float(scale), "scale_x": float(scale), "cell_area_px": stats}


def train(settings: CellposeSettings | None, dataset, split: dict, out_dir: str | Path, control: RunControl | None = None,
          device: str | None = None) -> dict:
    """Train Cellpose on ``split["train"]`` (validation loss on ``split["val"]``); returns run.json's content.

    The run folder's life cycle (refusals, resume from ``last.pt``, the time budget, status
    words) is ``data.lifecycle``'s. Bad settings, a missing released model offline or an
    empty training split raise ``PeerError`` before anything is written.
    """
    settings = (settings or CellposeSettings()).checked()
    control = control or RunControl()
    _cellpose()
    import torch
    from cellpose.train import _loss_fn_seg

    train_names, val_names = list(split.get("train", [])), list(split.get("val", []))
    if not train_names:
        raise PeerError(f"{control.split_path or 'split'}: the split has no training images")
    split_record = {"path": str(control.split_path) if control.split_path else None, "seed": split.get("seed"),
                    "train": train_names, "val": val_names}
    run = open_run(out_dir, run_spec(settings, split_record), control.resume, control.overwrite)
    if run.done:
        return run.record.to_dict()
    resuming = run.start_epoch > 0
    state, start_diam, source = (None, None, run.record.details.get("weights_source", "")) if resuming else initial_state(settings.weights)
    train_data = prepare(dataset, train_names, settings.min_train_masks)
    if not train_data.images:
        raise PeerError(f"no training image has at least {settings.min_train_masks} cells (min_train_masks)")
    val_data = prepare(dataset, val_names)
    diameter = float(np.mean(train_data.diameters))
    target = torch_device(device)
    reproducibility = _reproducible(settings.deterministic)
    torch.manual_seed(settings.seed)
    net = build_net(settings.diam_mean if start_diam is None else start_diam, target)
    if state is not None:
        net.load_state_dict({**state, "diam_mean": net.diam_mean.data.clone()}, strict=False)
    net.diam_labels.data = torch.tensor([diameter], dtype=torch.float32, device=target)
    if settings.optimizer == "sgd":
        optimizer = torch.optim.SGD(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    if resuming:
        checkpoint = torch.load(str(run.out_dir / "last.pt"), map_location=target, weights_only=True)
        net.load_state_dict(checkpoint["net"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    diam_mean = float(net.diam_mean.item())
    rates = learning_rates(settings.lr, settings.epochs)
    run.start({
        "task": "instance segmentation (Cellpose flows and cell probability)", "weights_source": source,
        "peer_versions": versions(), "n_train": len(train_data.names), "n_val": len(val_data.names),
        "left_out": sorted(set(train_names) - set(train_data.names)), "device": str(target),
        "files": {"best": "best.pt", "last": "last.pt", "history": HISTORY_CSV},
        "best_by": "val_loss" if val_data.images else "train_loss (no validation images)",
        "reproducibility": reproducibility,
        "diameter": {"diameter_px": diameter, "diam_mean_px": diam_mean,
                     "rule": "mean over the training images of each image's median cell diameter (Cellpose's diam_labels)",
                     "train_image_medians_px": {"min": float(train_data.diameters.min()),
                                                "median": float(np.median(train_data.diameters)),
                                                "max": float(train_data.diameters.max())}},
        "geometry": _geometry(dataset, train_data.names, diam_mean, diameter),
    })

    def losses(data: TrainingData, order: Sequence[int], seed: tuple[int, ...], learn: bool) -> float:
        total = 0.0
        net.train(learn)
        for start in range(0, len(order), settings.batch_size):
            batch = list(order[start:start + settings.batch_size])
            with numpy_seeded(*seed, start):
                imgi, lbl = crops(data, batch, diam_mean, settings)
            with torch.set_grad_enabled(learn):
                loss = _loss_fn_seg(lbl, net(torch.from_numpy(imgi).to(target))[0], target)
            if learn:
                if not torch.isfinite(loss):
                    raise PeerError(f"training diverged ({loss.item()}); lower lr (last.pt keeps the last good epoch)", run.out_dir)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            total += float(loss.detach()) * len(batch)
        return total / max(len(order), 1)

    def train_epoch(epoch: int) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = float(rates[epoch - 1])
        order = np.random.default_rng([settings.seed, epoch]).permutation(len(train_data.images))
        return {"loss": losses(train_data, order, (settings.seed, epoch), True)}

    def evaluate(epoch: int) -> dict[str, float] | None:
        if not val_data.images:
            return None
        return {"loss": losses(val_data, range(len(val_data.images)), (VALIDATION_SEED,), False)}

    def save(epoch: int, improved: bool, monitored: float) -> None:
        weights = net.state_dict()
        if improved:
            _save(run.out_dir / "best.pt", weights)
        _save(run.out_dir / "last.pt", {"net": weights, "optimizer": optimizer.state_dict(), "epoch": epoch})

    def row(epoch: int, train_losses, val_losses, seconds: float) -> dict:
        return {**default_row(epoch, train_losses, val_losses, seconds), "lr": float(rates[epoch - 1])}

    return run_epochs(run, EpochSteps(train=train_epoch, evaluate=evaluate, save=save, row=row), show=not control.quiet)


# ---------------------------------------------------------------- prediction

@dataclass
class LoadedCellpose:
    """A trained run ready to predict: Cellpose's model on the best weights and the recorded predict settings."""

    model: Any
    diameter: float
    flow_threshold: float
    cellprob_threshold: float
    min_size: int
    weights: str
    run_dir: Path


def load(run_dir: str | Path, device: str | None = None, which: str = "best") -> LoadedCellpose:
    """The run's ``best.pt`` (or ``last.pt``) in a ``cellpose.models.CellposeModel``, with the diameter and thresholds of run.json."""
    _cellpose()
    from cellpose import models

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    if record.trainer != NAME:
        raise PeerError(f"holds a {record.trainer} run, not a {NAME} run", run_dir / RUN_JSON)
    path = run_dir / f"{which}.pt"
    if not path.is_file():
        raise PeerError("missing: the run has no finished epoch with these weights", path)
    state = _state_dict(path)
    target = torch_device(device)
    diam_mean = float(state["diam_mean"].reshape(-1)[0])
    model = models.CellposeModel(gpu=target.type == "cuda", device=target, pretrained_model=False, diam_mean=diam_mean)
    model.net.load_state_dict(state)
    model.net.eval()
    settings = record.settings
    diameter = settings.get("diameter") or (record.details.get("diameter") or {}).get("diameter_px")
    if not diameter:
        raise PeerError("run.json records no cell diameter; set the diameter setting", run_dir / RUN_JSON)
    return LoadedCellpose(model, float(diameter), float(settings.get("flow_threshold", 0.4)),
                          float(settings.get("cellprob_threshold", 0.0)), int(settings.get("min_size", 15)),
                          str(path), run_dir)


def cellpose_outputs(model: LoadedCellpose, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cellpose's ``eval`` of one H x W x 3 image: (labels H x W int32 1..N, cell-probability logits H x W, flows 2 x H x W)."""
    masks, flows, _ = model.model.eval(np.asarray(image, np.float32), channels=[0, 0], channel_axis=-1,
                                       diameter=model.diameter, flow_threshold=model.flow_threshold,
                                       cellprob_threshold=model.cellprob_threshold, min_size=model.min_size)
    masks = np.asarray(masks, np.int64)
    ids = np.unique(masks[masks > 0])
    lookup = np.zeros(int(masks.max(initial=0)) + 1, np.int32)
    lookup[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    return lookup[masks], np.asarray(flows[2], np.float32), np.asarray(flows[1], np.float32)


def mask_flows(labels: np.ndarray) -> np.ndarray:
    """2 x H x W unit flows of ``labels`` (``cellpose.dynamics.masks_to_flows`` on the CPU)."""
    import torch
    from cellpose import dynamics

    if not np.any(labels):
        return np.zeros((2, *labels.shape), np.float32)
    return np.asarray(dynamics.masks_to_flows(np.asarray(labels, np.int32), device=torch.device("cpu")), np.float32)


def predict_labels(model: LoadedCellpose, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels H x W int32 (0 background, 1..N) and N scores (``SCORE_SOURCE``) of one H x W x 3 image in [0, 1]."""
    labels, cellprob, _ = cellpose_outputs(model, image)
    return labels, detection_scores(cellprob, labels)


def _image_ids(gt: dict | str | Path) -> dict[str, int]:
    if not isinstance(gt, dict):
        try:
            gt = json.loads(Path(gt).read_text())
        except (OSError, ValueError) as error:
            raise PeerError(f"cannot read the COCO ground truth ({error})", gt) from None
    try:
        return {image["file_name"]: int(image["id"]) for image in gt["images"]}
    except (KeyError, TypeError, ValueError):
        raise PeerError("not a COCO ground truth (images with file_name and id)") from None


def predict_to_coco(run_dir: str | Path, dataset, names: Sequence[str], gt: dict | str | Path, out_json: str | Path,
                    device: str | None = None, overwrite: bool = False, max_detections: int = 300, quiet: bool = True) -> Path:
    """Predict ``names`` with the run's best weights and write COCO results (and ``<name>.meta.json``) to ``out_json``.

    Image ids come from ``gt`` (a COCO dict or its path) by ``file_name`` == sample name.
    """
    out_json = Path(out_json)
    check_can_write(out_json, overwrite)
    ids = _image_ids(gt)
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
    record = read_record(run_dir)
    meta = {"method": NAME, "score_source": SCORE_SOURCE, "versions": versions(),
            "weights": record.details.get("weights_source", ""), "checkpoint": loaded.weights,
            "diameter_px": loaded.diameter, "flow_threshold": loaded.flow_threshold,
            "cellprob_threshold": loaded.cellprob_threshold}
    return write_results(out_json, results, meta)
