"""Mask R-CNN training (torchvision references: check, load or resume, train one epoch, evaluate, checkpoint).

The paper's recipe and the choices this module makes are described in ``torch_instseg.maskrcnn``.
The run folder's life cycle (refusals, resume, time budget, run.json, status words) is
``data.lifecycle``'s; this module supplies "train one epoch", "evaluate" and the checkpoint.
torch is imported inside functions only.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from data.geometry import maskrcnn_training_geometry
from data.lifecycle import EpochSteps, RunControl, RunSpec, TrainingRun, open_run, run_epochs
from data.outputs import named_os_error
from data.run_record import HISTORY_CSV, RUN_JSON, RunRecord

from .distributed import (Processes, barrier, batch_per_process, launch_environment, on_main, open_shared_run, run_batches, start,
                          stop, training_loader, wrap)
from .errors import InstsegError
from .maskrcnn_data import InstanceTrainingSet, collate, resize_sample
from .maskrcnn_model import MODEL_NAME, build_maskrcnn, freeze_batchnorm, import_torch
from .reproducible import make_reproducible
from .settings import MASKRCNN_RESUME_MUST_MATCH, MaskRCNNSettings
from .weights import COCO_WEIGHTS_FILE, ensure_coco_weights

LOSS_COMPONENTS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
RUN_FILES = (RUN_JSON, HISTORY_CSV, "best.pt", "last.pt")
RESUME_MUST_MATCH = MASKRCNN_RESUME_MUST_MATCH


# ---------------------------------------------------------------- training (torchvision references: check, load or resume, train one epoch, evaluate, checkpoint)

@dataclass
class TrainingState:
    """What a checkpoint restores: model, optimiser, scheduler, and where training stands."""

    model: Any
    optimizer: Any
    scheduler: Any
    start_epoch: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0


def _load_arrays(dataset, names: Sequence[str], image_size: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, labels = [], []
    for sample in dataset.subset(list(names)):
        image, label = sample.image, sample.labels
        if image_size:
            image, label = resize_sample(image, label, image_size)
        images.append(image)
        labels.append(label)
    return images, labels


def _distributed() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment (``distributed.launch_environment``)."""
    processes = launch_environment()
    return processes.world, processes.rank, processes.local_rank


def _epoch_losses(model, loader, device, optimizer=None, warmup=None, progress=None,
                  processes: Processes = Processes()) -> dict[str, float]:
    """Mean of each loss component over the images of every process; trains when an optimizer is given."""

    def losses_of(batch) -> tuple[dict, int]:
        images, targets = batch
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{key: value.to(device, non_blocking=True) for key, value in target.items()} for target in targets]
        loss_dict = model(images, targets)
        zero = next(iter(loss_dict.values())) * 0.0
        return {"loss": sum(loss_dict.values()), **{name: loss_dict.get(name, zero) for name in LOSS_COMPONENTS}}, len(images)

    return run_batches(loader, losses_of, processes, device, optimizer, warmup, progress)


def check_training_inputs(settings: MaskRCNNSettings, split: dict, split_path: str | Path | None, resume: bool,
                          download: bool) -> tuple[list[str], list[str]]:
    """(train names, val names) after checking the split and the initial weights."""
    train_names, val_names = list(split.get("train", [])), list(split.get("val", []))
    if not train_names:
        raise InstsegError(f"{split_path or 'split'}: the split has no training images")
    if settings.weights == "coco" and not resume:
        ensure_coco_weights(download)
    elif settings.weights != "none" and not resume and not Path(settings.weights).is_file():
        raise InstsegError(f"{settings.weights}: weights file not found")
    return train_names, val_names


def run_spec(settings: MaskRCNNSettings, split_record: dict) -> RunSpec:
    """What the shared life cycle (``data.lifecycle``) needs to know about this run."""
    return RunSpec("maskrcnn", MODEL_NAME, settings.to_record(), split_record, settings.epochs, RESUME_MUST_MATCH, RUN_FILES,
                   resume_files=("last.pt",), max_minutes=settings.max_minutes)


def load_or_resume_record(out_dir: Path, settings: MaskRCNNSettings, split_record: dict, resume: bool,
                          overwrite: bool) -> RunRecord:
    """The run record to continue (``resume``: same settings and split) or a new one; ``RunFolderError`` when refused."""
    run = open_run(out_dir, run_spec(settings, split_record), resume, overwrite)
    run.record.settings, run.record.epochs = settings.to_record(), settings.epochs
    return run.record


def build_training_state(settings: MaskRCNNSettings, device, out_dir: Path, resume: bool, download: bool) -> TrainingState:
    """Model, AdamW and ReduceLROnPlateau; on ``resume`` all three from ``last.pt``."""
    import torch

    torch.manual_seed(settings.seed)
    model = build_maskrcnn("none" if resume else settings.weights, detections_per_image=settings.detections_per_image,
                           min_size=settings.min_size, max_size=settings.max_size, download=download, **settings.model_options)
    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=settings.plateau_factor,
                                                           patience=settings.plateau_patience)
    state = TrainingState(model, optimizer, scheduler)
    if resume:
        checkpoint = torch.load(str(out_dir / "last.pt"), map_location="cpu", weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state.start_epoch = int(checkpoint["epoch"])
    return state


def _loaders(settings: MaskRCNNSettings, arrays: tuple, device, processes: Processes = Processes()):
    """(train loader, its sampler, validation loader or None); the training batches are ``distributed``'s global batches."""
    import torch

    train_images, train_labels, val_images, val_labels = arrays
    train_set = InstanceTrainingSet(train_images, train_labels, settings.augmentation, settings.seed)
    val_set = InstanceTrainingSet(val_images, val_labels, None, settings.seed)
    options = {"collate_fn": collate, "num_workers": settings.num_workers, "pin_memory": device.type == "cuda"}
    train_loader, train_sampler = training_loader(train_set, settings.batch_size, processes, settings.seed, **options)
    val_loader = None
    if len(val_set):
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=settings.batch_size, shuffle=False, **options)
    return train_loader, train_sampler, val_loader


def make_warmup(optimizer, total: int, start_iteration: int, decay_until: int | None = None,
                base_lr: float | None = None) -> Callable[[], None]:
    """A function called before each step: linear warm-up of the lr from 0.1% over ``total`` iterations.

    decay_until: with a cosine schedule, the iteration at which the lr reaches 0 (half a
    cosine from the end of the warm-up); None keeps the lr after the warm-up to the plateau scheduler.
    base_lr: the lr the factors multiply (default: each group's lr now; give it on resume).
    """
    base_lrs = [group["lr"] if base_lr is None else base_lr for group in optimizer.param_groups]
    step = {"iteration": start_iteration}

    def factor_at(iteration: int) -> float | None:
        if iteration < total:
            return 0.001 + (1.0 - 0.001) * iteration / total
        if decay_until is not None:
            span = max(decay_until - total, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(iteration - total, span) / span))
        return 1.0 if iteration == total and total > 0 else None

    def warmup() -> None:
        factor = factor_at(step["iteration"])
        step["iteration"] += 1
        if factor is not None:
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor

    return warmup


def train_one_epoch(net, loader, sampler, device, optimizer, warmup, epoch: int, progress,
                    processes: Processes = Processes()) -> dict[str, float]:
    """Mean training losses of one epoch over every process (order and augmentation drawn for ``epoch``)."""
    loader.dataset.set_epoch(epoch)
    if sampler is not None:
        sampler.set_epoch(epoch)
    net.train()
    return _epoch_losses(net, loader, device, optimizer, warmup, progress, processes)


def evaluate_loss(net, loader, device, seed: int) -> dict[str, float]:
    """Mean validation losses: train mode (torchvision returns losses only there), BatchNorm frozen, no gradients, fixed seed.

    net: the model itself, not its DDP wrapper (rank 0 validates alone).
    """
    import torch

    net.train()
    freeze_batchnorm(net)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _epoch_losses(net, loader, device)


def save_checkpoint(out_dir: Path, state: TrainingState, epoch: int, improved: bool, monitored: float) -> None:
    """``last.pt`` (model, optimiser, scheduler, counters) and, when ``improved``, ``best.pt``.

    Both are written to ``<name>.partial`` first and renamed only when every write succeeded: on
    a failure (a full disk: ``OSError`` naming the checkpoint) the partial files are removed and
    the previous checkpoints are left as they were.
    """
    weights = state.model.state_dict()
    checkpoints = {}
    if improved:
        checkpoints[out_dir / "best.pt"] = {"model": weights, "epoch": epoch, "monitored_loss": monitored}
    checkpoints[out_dir / "last.pt"] = {"model": weights, "optimizer": state.optimizer.state_dict(),
                                        "scheduler": state.scheduler.state_dict(), "epoch": epoch,
                                        "best_loss": state.best_loss, "best_epoch": state.best_epoch}
    _save_together(checkpoints)


def _save_together(checkpoints: dict[Path, dict]) -> None:
    """``torch.save`` each checkpoint to its partial file, then rename them all; on a failure none changes."""
    import torch

    partials: list[Path] = []
    try:
        for path, content in checkpoints.items():
            partials.append(_partial(path))
            torch.save(content, str(partials[-1]))
    except BaseException as error:
        for partial in partials:
            with contextlib.suppress(OSError):
                partial.unlink()
        if isinstance(error, OSError):
            raise named_os_error(error, path) from None
        raise
    for path in checkpoints:
        os.replace(_partial(path), path)


def _history_row(epoch: int, train: dict[str, float], val: dict[str, float] | None, lr: float, seconds: float) -> dict:
    row = {"epoch": epoch, "train_loss": train["loss"], "val_loss": val["loss"] if val else float("nan"), "lr": lr,
           "time_s": seconds}
    row.update({f"train_{name}": train[name] for name in LOSS_COMPONENTS})
    row.update({f"val_{name}": (val[name] if val else float("nan")) for name in LOSS_COMPONENTS})
    return row


def train_maskrcnn(
    dataset,
    split: dict,
    out_dir: str | Path,
    settings: MaskRCNNSettings | None = None,
    *,
    control: RunControl | None = None,
    device: str | None = None,
    download: bool = True,
    **options: Any,
) -> dict:
    """Train Mask R-CNN on ``split["train"]``, validate on ``split["val"]``; returns run.json's content.

    ``settings`` (or its fields as keyword ``options``) are the recipe; the run folder's life
    cycle (refusals, ``resume`` from ``last.pt`` with the same settings and split, ``overwrite``,
    the time budget, status words) is ``data.lifecycle``'s. Bad input raises
    ``InstsegError``/``DatasetError``/``RunFolderError`` before anything is written. ``control``
    (``data.lifecycle.RunControl``) or its fields as keywords (``resume=True``, ``quiet=True``) are the run control.
    """
    control = RunControl.taken_from(control, options)
    resume, overwrite, quiet, split_path = control.resume, control.overwrite, control.quiet, control.split_path
    import_torch()
    try:
        settings = replace(settings or MaskRCNNSettings(), **options).checked()
    except TypeError as error:
        raise InstsegError(f"unknown Mask R-CNN setting ({error})") from None
    train_names, val_names = list(split.get("train", [])), list(split.get("val", []))
    split_record = {"path": str(split_path) if split_path else None, "seed": split.get("seed"),
                    "train": train_names, "val": val_names}
    processes, torch_device = start(device)
    batch_per_process(settings.batch_size, processes)
    run = open_shared_run(out_dir, run_spec(settings, split_record), resume, overwrite, processes)
    if run.done:
        return run.record.to_dict()
    check_training_inputs(settings, split, split_path, run.start_epoch > 0, download)
    arrays = (*_load_arrays(dataset, train_names, settings.image_size), *_load_arrays(dataset, val_names, settings.image_size))
    reproducibility = make_reproducible(settings.deterministic)
    state = build_training_state(settings, torch_device, run.out_dir, run.start_epoch > 0, download)
    loaders = _loaders(settings, arrays, torch_device, processes)
    net = wrap(state.model, processes, torch_device)
    run.start({
        "task": "instance segmentation (2 classes: background, cell)",
        "weights_source": settings.weights if settings.weights != "coco" else f"coco ({COCO_WEIGHTS_FILE})",
        "n_train": len(train_names), "n_val": len(val_names), "device": str(torch_device), **processes.record(settings.batch_size),
        "files": {"best": "best.pt", "last": "last.pt", "history": HISTORY_CSV},
        "best_by": "val_loss" if loaders[2] is not None else "train_loss (no validation images)",
        "reproducibility": reproducibility,
        "geometry": maskrcnn_training_geometry(dataset, train_names, settings.image_size, settings.min_size, settings.max_size),
    })
    show = not quiet and processes.main
    record = run_epochs(run, epoch_steps(settings, state, net, loaders, torch_device, run, show, processes), show=show)
    barrier(processes)
    return record


def epoch_steps(settings: MaskRCNNSettings, state: TrainingState, net, loaders: tuple, device, run: TrainingRun,
                show: bool, processes: Processes = Processes()) -> EpochSteps:
    """Mask R-CNN's "train one epoch", "evaluate", plateau step and checkpoint for ``data.lifecycle.run_epochs``.

    net: ``state.model`` or its DDP wrapper; rank 0 validates ``state.model`` and every process gets its losses.
    """
    from tqdm.auto import tqdm

    train_loader, train_sampler, val_loader = loaders
    iterations = len(train_loader)
    warmup_total = min(1000, max(iterations - 1, 0)) if settings.warmup_iters is None else int(settings.warmup_iters)
    cosine_end = settings.epochs * iterations if settings.lr_schedule == "cosine" else None
    warmup = make_warmup(state.optimizer, warmup_total, run.start_epoch * iterations, cosine_end, settings.lr)
    learning_rate = {}

    def train(epoch: int) -> dict[str, float]:
        with tqdm(total=iterations, desc=f"epoch {epoch}/{settings.epochs}", leave=False, disable=not show) as batches:
            try:
                losses = train_one_epoch(net, train_loader, train_sampler, device, state.optimizer, warmup, epoch - 1, batches,
                                         processes)
            except FloatingPointError as error:
                raise InstsegError(f"training diverged at epoch {epoch} ({error}); lower --lr (last.pt keeps the last good epoch)",
                                   run.out_dir) from None
        learning_rate[epoch] = state.optimizer.param_groups[0]["lr"]
        return losses

    def row(epoch: int, train_losses: dict, val_losses: dict | None, seconds: float) -> dict:
        return _history_row(epoch, train_losses, val_losses, learning_rate[epoch], seconds)

    def adjust(epoch: int, monitored: float) -> None:
        if settings.lr_schedule == "plateau":
            state.scheduler.step(monitored)

    def save(epoch: int, improved: bool, monitored: float) -> None:
        state.best_loss, state.best_epoch = run.best_loss, run.best_epoch
        save_checkpoint(run.out_dir, state, epoch, improved, monitored)

    def evaluate(epoch: int) -> dict[str, float] | None:
        if val_loader is None:
            return None
        return on_main(lambda: evaluate_loss(state.model, val_loader, device, settings.seed), processes)

    return EpochSteps(train=train, evaluate=evaluate, save=save, row=row, adjust=adjust)


def _partial(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".partial")


def _end_distributed() -> None:
    stop()
