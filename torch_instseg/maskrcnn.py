"""Mask R-CNN (torchvision ResNet-50-FPN v2) for cell instances: build, train, predict.

The paper's recipe: COCO-initialised ``maskrcnn_resnet50_fpn_v2`` with box and mask
predictors replaced for 2 classes (background, cell); AdamW lr 3e-3, weight decay 5e-4,
batch 2, 50 epochs, ReduceLROnPlateau on the validation loss; horizontal flip p=0.5,
vertical flip p=0.3, 90-degree rotation p=0.3; the weights with the lowest validation
loss are kept. Choices the paper does not state (and this module makes): the plateau
scheduler multiplies the lr by 0.1 after 5 epochs without improvement of the validation
loss; a linear warm-up over the first epoch (torchvision's reference recipe);
a rotation, when drawn, turns by 90, 180 or 270 degrees with equal chance; the
validation loss is computed in train mode (torchvision returns losses only there)
under ``torch.no_grad`` with every BatchNorm layer in eval mode and a fixed seed.

Outputs of a run (``out_dir``): ``run.json`` (every setting, versions, wall time,
split), ``history.csv`` (one row per epoch), ``best.pt`` and ``last.pt``.
torch is imported inside functions only.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.cli import add_dataset_arguments, make_parser, open_dataset, run_cli
from data.outputs import check_can_write, write_csv, write_json

from .errors import InstsegError
from .weights import COCO_WEIGHTS_FILE, ensure_coco_weights

MODEL_NAME = "maskrcnn_resnet50_fpn_v2"
AUGMENTATION = {"hflip": 0.5, "vflip": 0.3, "rot90": 0.3}
LOSS_COMPONENTS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
RUN_FILES = ("run.json", "history.csv", "best.pt", "last.pt")
DEFAULT_MIN_SIZE = 800
DEFAULT_MAX_SIZE = 1333
RESUME_MUST_MATCH = (
    "image_size", "batch_size", "lr", "weight_decay", "weights", "detections_per_image", "seed",
    "min_size", "max_size", "plateau_factor", "plateau_patience", "warmup_iters", "augmentation", "model_options",
)


def import_torch():
    """(torch, torchvision), or ``InstsegError`` with the install hint."""
    try:
        import torch
        import torchvision
    except ImportError as error:
        raise InstsegError(f"PyTorch is needed for the instance study ({error}); install it with: pip install -e .[torch]") from None
    return torch, torchvision


def resolve_device(device: str | None = None):
    torch, _ = import_torch()
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise InstsegError(f"unknown device '{device}' ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InstsegError(f"device '{device}' asked for but no CUDA GPU is available; use --device cpu")
    return resolved


# ---------------------------------------------------------------- instances and augmentation

def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """N x 4 float32 boxes (x0, y0, x1, y1) of N x H x W masks, in pixel-edge coordinates
    (x1 = last column + 1, so a one-pixel mask has a 1 x 1 box). An empty mask gives zeros."""
    masks = np.asarray(masks, dtype=bool)
    count = masks.shape[0]
    boxes = np.zeros((count, 4), np.float32)
    if count == 0:
        return boxes
    height, width = masks.shape[1:]
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = width - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = height - rows[:, ::-1].argmax(axis=1)
    boxes[~rows.any(axis=1)] = 0.0
    return boxes


def labels_to_instances(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One mask per label id of an H x W label image: (N x H x W bool, N x 4 float32 xyxy boxes)."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    masks = labels[None, :, :] == ids[:, None, None]
    return masks, masks_to_boxes(masks)


def random_augmentation(rng: np.random.Generator, probabilities: dict[str, float] = AUGMENTATION) -> list[tuple[str, int]]:
    """The flips and rotation to apply, drawn with the given probabilities: [("hflip", 1), ("rot90", k), ...]."""
    ops: list[tuple[str, int]] = []
    if rng.random() < probabilities.get("hflip", 0.0):
        ops.append(("hflip", 1))
    if rng.random() < probabilities.get("vflip", 0.0):
        ops.append(("vflip", 1))
    if rng.random() < probabilities.get("rot90", 0.0):
        ops.append(("rot90", int(rng.integers(1, 4))))
    return ops


def apply_augmentation(array: np.ndarray, ops: Sequence[tuple[str, int]], axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Apply flips/rotations to ``array`` whose (row, column) axes are ``axes``."""
    row_axis, col_axis = axes
    for op, turns in ops:
        if op == "hflip":
            array = np.flip(array, axis=col_axis)
        elif op == "vflip":
            array = np.flip(array, axis=row_axis)
        elif op == "rot90":
            array = np.rot90(array, k=turns, axes=(row_axis, col_axis))
        else:
            raise ValueError(f"unknown augmentation '{op}'")
    return np.ascontiguousarray(array)


def augment(
    image: np.ndarray, masks: np.ndarray, rng: np.random.Generator, probabilities: dict[str, float] = AUGMENTATION
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same random flips/rot90 on an H x W x 3 image and its N x H x W masks; boxes (N x 4 xyxy) recomputed from the masks."""
    ops = random_augmentation(rng, probabilities)
    image = apply_augmentation(image, ops, (0, 1))
    masks = apply_augmentation(masks, ops, (1, 2))
    return image, masks, masks_to_boxes(masks)


def resize_sample(image: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (bilinear, antialiased) and labels (nearest) resized to size x size."""
    from PIL import Image

    height, width = labels.shape
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), mode="F").resize((size, size), Image.BILINEAR)) for c in range(3)]
    resized = np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)
    rows = np.minimum(((np.arange(size) + 0.5) * height / size).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * width / size).astype(np.int64), width - 1)
    return resized, np.ascontiguousarray(labels[rows][:, cols])


def to_model_inputs(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray):
    """(3 x H x W float tensor, target dict with boxes N x 4, labels N (all 1 = cell), masks N x H x W uint8)."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32))
    target = {
        "boxes": torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4)),
        "labels": torch.ones((len(boxes),), dtype=torch.int64),
        "masks": torch.from_numpy(np.ascontiguousarray(masks, np.uint8)),
    }
    return tensor, target


class InstanceTrainingSet:
    """Map-style dataset of (3 x H x W image tensor, target dict) for torchvision detection models.

    Augmentation, when on, is drawn from a generator seeded by (seed, epoch, index): the same
    epoch of the same run always sees the same flips. Call ``set_epoch`` before each epoch.
    """

    def __init__(self, images: list[np.ndarray], labels: list[np.ndarray], augmentation: dict[str, float] | None = None, seed: int = 0):
        self.images = images
        self.labels = labels
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        masks, boxes = labels_to_instances(self.labels[index])
        image = self.images[index]
        if self.augmentation:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, masks, boxes = augment(image, masks, rng, self.augmentation)
        return to_model_inputs(image, masks, boxes)


def collate(batch):
    return tuple(zip(*batch))


# ---------------------------------------------------------------- model

def _replace_predictors(model, num_classes: int) -> None:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    box_features = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_predictor = FastRCNNPredictor(box_features, num_classes)
    mask_features = model.roi_heads.mask_predictor.conv5_mask.in_channels
    model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_features, 256, num_classes)


def read_state_dict(path: str | Path) -> dict:
    """A model state dict from a .pth/.pt file (a plain state dict or a checkpoint with a 'model' entry)."""
    torch, _ = import_torch()
    path = Path(path)
    if not path.is_file():
        raise InstsegError(f"{path}: weights file not found")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unreadable file is bad input
        raise InstsegError(f"{path}: cannot read weights ({type(error).__name__}: {error})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise InstsegError(f"{path}: not a model state dict")
    return state


def weights_source(weights: str | os.PathLike | None) -> str:
    """'coco', 'none' or the path given, as recorded in run.json."""
    if weights is None:
        return "none"
    text = str(weights)
    if text.lower() in ("coco", "none"):
        return text.lower()
    return str(Path(text).expanduser())


def build_maskrcnn(
    weights: str | os.PathLike | None = "coco",
    *,
    num_classes: int = 2,
    detections_per_image: int = 300,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    download: bool = True,
    **model_options: Any,
):
    """``maskrcnn_resnet50_fpn_v2`` with predictors for ``num_classes`` (background + cell).

    weights: "coco" (torchvision's COCO_V1 from its cache, downloaded once if online; offline
    raises ``InstsegError`` naming the file and folder), "none"/None (random init, no backbone
    weights either) or a path to a .pth (COCO-shaped or already ``num_classes``-shaped).
    min_size/max_size: the model's internal resize (torchvision's GeneralizedRCNNTransform).
    model_options: more keyword arguments of torchvision's ``MaskRCNN`` (for example
    ``box_batch_size_per_image`` or ``rpn_post_nms_top_n_train``, to make CPU runs cheaper).
    """
    import_torch()
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, maskrcnn_resnet50_fpn_v2

    options = {"box_detections_per_img": int(detections_per_image), "min_size": int(min_size), "max_size": int(max_size), **model_options}
    source = weights_source(weights)
    if source == "coco":
        ensure_coco_weights(download)
        try:
            model = maskrcnn_resnet50_fpn_v2(weights=MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1, progress=False, **options)
        except (OSError, RuntimeError) as error:
            raise InstsegError(f"cannot load the COCO weights {COCO_WEIGHTS_FILE} ({error}); delete the file from torchvision's cache and retry, or use --weights none") from None
        _replace_predictors(model, num_classes)
        return model
    if source == "none":
        return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes, **options)
    state = read_state_dict(source)
    classes_in_file = state.get("roi_heads.box_predictor.cls_score.weight")
    if classes_in_file is None:
        raise InstsegError(f"{source}: not a Mask R-CNN state dict (no roi_heads.box_predictor.cls_score.weight)")
    file_classes = int(classes_in_file.shape[0])
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=file_classes, **options)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0:2]
        raise InstsegError(f"{source}: weights do not fit {MODEL_NAME} ({' '.join(first_line)})") from None
    if file_classes != num_classes:
        _replace_predictors(model, num_classes)
    return model


def freeze_batchnorm(model) -> None:
    """Put every BatchNorm layer in eval mode (running statistics used and not updated)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


# ---------------------------------------------------------------- training

def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import torch
        import torchvision

        versions["torch"] = torch.__version__
        versions["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        versions["mscseg"] = version("mscseg")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        pass
    return versions


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
    """(world size, rank, local rank) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _epoch_losses(model, loader, device, optimizer=None, warmup=None, progress=None) -> dict[str, float]:
    """Mean of each loss component over the batches (weighted by batch size); trains when an optimizer is given."""
    import torch

    sums = dict.fromkeys(("loss",) + LOSS_COMPONENTS, 0.0)
    count = 0
    for images, targets in loader:
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{key: value.to(device, non_blocking=True) for key, value in target.items()} for target in targets]
        if optimizer is not None:
            if warmup is not None:
                warmup()
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad():
                loss_dict = model(images, targets)
                loss = sum(loss_dict.values())
        size = len(images)
        count += size
        sums["loss"] += float(loss.detach()) * size
        for name in LOSS_COMPONENTS:
            if name in loss_dict:
                sums[name] += float(loss_dict[name].detach()) * size
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{sums['loss'] / count:.3f}")
    totals = torch.tensor([sums[key] for key in sums] + [float(count)], dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    count_all = float(totals[-1])
    if count_all == 0:
        return {key: float("nan") for key in sums}
    return {key: float(totals[i]) / count_all for i, key in enumerate(sums)}


def _settings_dict(**settings: Any) -> dict[str, Any]:
    return {key: (dict(value) if isinstance(value, dict) else value) for key, value in settings.items()}


def train_maskrcnn(
    dataset,
    split: dict,
    out_dir: str | Path,
    *,
    image_size: int | None = None,
    epochs: int = 50,
    batch_size: int = 2,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    weights: str | os.PathLike | None = "coco",
    detections_per_image: int = 300,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    num_workers: int = 0,
    seed: int = 0,
    quiet: bool = False,
    split_path: str | Path | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    plateau_factor: float = 0.1,
    plateau_patience: int = 5,
    warmup_iters: int | None = None,
    augmentation: dict[str, float] | None = None,
    max_minutes: float | None = None,
    download: bool = True,
    model_options: dict[str, Any] | None = None,
) -> dict:
    """Train Mask R-CNN on ``split["train"]``, validate on ``split["val"]``; returns run.json's content.

    image_size: None keeps the native size (the model then resizes internally with
    min_size/max_size, default torchvision's 800/1333); N resizes every image to N x N once
    and sets the model's min_size = max_size = N. warmup_iters: None = the first epoch's
    iterations (at most 1000), 0 = none. max_minutes: stop after the epoch that passes this
    wall time (status "stopped: time budget"; ``resume=True`` continues). model_options:
    extra torchvision ``MaskRCNN`` arguments (see ``build_maskrcnn``), recorded. Raises
    ``InstsegError``/``DatasetError`` for bad input before anything is written.
    """
    torch, torchvision = import_torch()
    out_dir = Path(out_dir)
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if int(value) < 1:
            raise InstsegError(f"{name} must be at least 1, got {value}")
    if not lr > 0 or weight_decay < 0:
        raise InstsegError(f"lr must be positive and weight decay non-negative (got lr={lr}, weight_decay={weight_decay})")
    if image_size is not None and int(image_size) < 32:
        raise InstsegError(f"image size must be at least 32 pixels, got {image_size}")
    train_names = list(split.get("train", []))
    val_names = list(split.get("val", []))
    if not train_names:
        raise InstsegError(f"{split_path or 'split'}: the split has no training images")
    if image_size:
        min_size = max_size = int(image_size)
    min_size = int(min_size or DEFAULT_MIN_SIZE)
    max_size = int(max_size or DEFAULT_MAX_SIZE)
    augmentation = dict(AUGMENTATION if augmentation is None else augmentation)
    settings = _settings_dict(
        image_size=int(image_size) if image_size else None, epochs=int(epochs), batch_size=int(batch_size), lr=float(lr),
        weight_decay=float(weight_decay), weights=weights_source(weights), detections_per_image=int(detections_per_image),
        seed=int(seed), min_size=min_size, max_size=max_size, plateau_factor=float(plateau_factor),
        plateau_patience=int(plateau_patience), warmup_iters=warmup_iters, augmentation=augmentation,
        optimizer="AdamW", scheduler="ReduceLROnPlateau(val_loss)", num_workers=int(num_workers), max_minutes=max_minutes,
        model_options=dict(model_options or {}),
    )

    if settings["weights"] == "coco" and not resume:
        ensure_coco_weights(download)
    elif settings["weights"] != "none" and not resume and not Path(settings["weights"]).is_file():
        raise InstsegError(f"{settings['weights']}: weights file not found")
    world, rank, local_rank = _distributed()
    is_main = rank == 0
    run_json = out_dir / "run.json"
    previous: dict | None = None
    if resume:
        if not (out_dir / "last.pt").is_file() or not run_json.is_file():
            raise InstsegError(f"{out_dir}: nothing to resume (no last.pt and run.json); start without --resume")
        import json

        previous = json.loads(run_json.read_text())
        old = previous.get("settings", {})
        differ = [f"{key}={old.get(key)!r} (now {settings[key]!r})" for key in RESUME_MUST_MATCH if old.get(key) != settings[key]]
        if differ:
            raise InstsegError(f"{run_json}: cannot resume with other settings: {', '.join(differ)}; pass the same ones, or start over with --overwrite")
        old_split = previous.get("split", {})
        if old_split.get("train") != train_names or old_split.get("val") != val_names:
            raise InstsegError(f"{run_json}: the split differs from the one this run was trained on; resume with the same split")
    elif not overwrite:
        for name in RUN_FILES:
            check_can_write(out_dir / name, overwrite=False)

    train_images, train_labels = _load_arrays(dataset, train_names, image_size)
    val_images, val_labels = _load_arrays(dataset, val_names, image_size)

    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if (device in (None, "cuda", "auto") and torch.cuda.is_available()) else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if world > 1 and torch.cuda.is_available() and device in (None, "cuda", "auto"):
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    else:
        torch_device = resolve_device(device)

    if is_main and overwrite and not resume:
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
    torch.manual_seed(seed)
    model = build_maskrcnn(
        "none" if resume else weights, detections_per_image=detections_per_image, min_size=min_size, max_size=max_size,
        download=download, **settings["model_options"],
    )
    model.to(torch_device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=plateau_factor, patience=plateau_patience)

    start_epoch, best_loss, best_epoch, wall_before = 0, math.inf, 0, 0.0
    history: list[dict] = []
    if resume:
        checkpoint = torch.load(str(out_dir / "last.pt"), map_location="cpu", weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        start_epoch = int(checkpoint["epoch"])
        best_loss = float(checkpoint.get("best_loss", math.inf))
        best_epoch = int(checkpoint.get("best_epoch", 0))
        wall_before = float(previous.get("wall_time_s", 0.0)) if previous else 0.0
        if (out_dir / "history.csv").is_file():
            import pandas as pd

            history = pd.read_csv(out_dir / "history.csv").to_dict("records")[:start_epoch]

    train_set = InstanceTrainingSet(train_images, train_labels, augmentation, seed)
    val_set = InstanceTrainingSet(val_images, val_labels, None, seed)
    train_sampler = val_sampler = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        train_sampler = DistributedSampler(train_set, shuffle=True, seed=seed)
        val_sampler = DistributedSampler(val_set, shuffle=False) if len(val_set) else None
    generator = torch.Generator().manual_seed(seed)
    loader_options = {"batch_size": batch_size, "collate_fn": collate, "num_workers": num_workers, "pin_memory": torch_device.type == "cuda"}
    train_loader = torch.utils.data.DataLoader(train_set, shuffle=train_sampler is None, sampler=train_sampler, generator=generator, **loader_options)
    val_loader = torch.utils.data.DataLoader(val_set, shuffle=False, sampler=val_sampler, **loader_options) if len(val_set) else None
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch_device.index] if torch_device.type == "cuda" else None)

    iterations_per_epoch = len(train_loader)
    warmup_total = min(1000, max(iterations_per_epoch - 1, 0)) if warmup_iters is None else int(warmup_iters)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    step = {"iteration": start_epoch * iterations_per_epoch}

    def warmup() -> None:
        iteration = step["iteration"]
        step["iteration"] += 1
        if iteration < warmup_total:
            factor = 0.001 + (1.0 - 0.001) * iteration / warmup_total
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
        elif iteration == warmup_total and warmup_total > 0:
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base

    from tqdm.auto import tqdm

    show = not quiet and is_main
    started = time.time()
    record = {
        "model": MODEL_NAME, "task": "instance segmentation (2 classes: background, cell)", "settings": settings,
        "weights_source": settings["weights"] if settings["weights"] != "coco" else f"coco ({COCO_WEIGHTS_FILE})",
        "split": {"path": str(split_path) if split_path else None, "seed": split.get("seed"), "train": train_names, "val": val_names},
        "n_train": len(train_names), "n_val": len(val_names), "device": str(torch_device), "world_size": world,
        "versions": _versions(), "files": {"best": "best.pt", "last": "last.pt", "history": "history.csv"},
        "best_by": "val_loss" if val_loader is not None else "train_loss (no validation images)",
        "started": previous.get("started") if previous else time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    status = "finished"
    epoch = start_epoch
    epoch_bar = tqdm(range(start_epoch, epochs), desc="epochs", disable=not show, initial=start_epoch, total=epochs)
    for epoch in epoch_bar:
        epoch_started = time.time()
        train_set.set_epoch(epoch)
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        net.train()
        batches = tqdm(total=iterations_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not show)
        try:
            train_losses = _epoch_losses(net, train_loader, torch_device, optimizer, warmup, batches)
        except FloatingPointError as error:
            raise InstsegError(f"{out_dir}: training diverged at epoch {epoch + 1} ({error}); lower --lr (last.pt keeps the last good epoch)") from None
        finally:
            batches.close()
        val_losses = None
        if val_loader is not None:
            net.train()
            freeze_batchnorm(net)
            devices = [torch_device] if torch_device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                val_losses = _epoch_losses(net, val_loader, torch_device)
        monitored = val_losses["loss"] if val_losses is not None else train_losses["loss"]
        current_lr = optimizer.param_groups[0]["lr"]
        scheduler.step(monitored)
        row = {"epoch": epoch + 1, "train_loss": train_losses["loss"], "val_loss": val_losses["loss"] if val_losses else float("nan"),
               "lr": current_lr, "time_s": time.time() - epoch_started}
        row.update({f"train_{name}": train_losses[name] for name in LOSS_COMPONENTS})
        row.update({f"val_{name}": (val_losses[name] if val_losses else float("nan")) for name in LOSS_COMPONENTS})
        history.append(row)
        improved = monitored < best_loss
        if improved:
            best_loss, best_epoch = monitored, epoch + 1
        if is_main:
            state = model.state_dict()
            if improved:
                torch.save({"model": state, "epoch": epoch + 1, "monitored_loss": monitored}, _partial(out_dir / "best.pt"))
                os.replace(_partial(out_dir / "best.pt"), out_dir / "best.pt")
            torch.save(
                {"model": state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                 "best_loss": best_loss, "best_epoch": best_epoch},
                _partial(out_dir / "last.pt"),
            )
            os.replace(_partial(out_dir / "last.pt"), out_dir / "last.pt")
            _write_progress(out_dir, history, record, epoch + 1, best_epoch, best_loss, wall_before + time.time() - started, "running")
        epoch_bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}")
        if max_minutes is not None and time.time() - started > 60.0 * max_minutes and epoch + 1 < epochs:
            status = f"stopped: time budget of {max_minutes} min after epoch {epoch + 1}"
            break
    epoch_bar.close()
    epochs_done = history[-1]["epoch"] if history else start_epoch
    record = _write_progress(out_dir, history, record, epochs_done, best_epoch, best_loss, wall_before + time.time() - started, status, write=is_main)
    if world > 1:
        torch.distributed.barrier()
    return record


def _partial(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".partial")


def _write_progress(out_dir: Path, history: list[dict], record: dict, epochs_done: int, best_epoch: int, best_loss: float,
                    wall_time: float, status: str, write: bool = True) -> dict:
    import pandas as pd

    times = [row["time_s"] for row in history]
    record = dict(record)
    record.update({
        "status": status, "epochs_done": int(epochs_done), "best_epoch": int(best_epoch),
        "best_loss": None if not math.isfinite(best_loss) else float(best_loss),
        "wall_time_s": round(float(wall_time), 3), "epoch_time_s_mean": round(float(np.mean(times)), 3) if times else None,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_csv(out_dir / "history.csv", pd.DataFrame(history))
        write_json(out_dir / "run.json", record)
    return record


# ---------------------------------------------------------------- inference

def load_model(run_dir: str | Path, which: str = "best", device: str | None = None):
    """The trained model of a run folder (``best.pt`` or ``last.pt``), in eval mode on ``device``.

    The run's image size is kept on the model as ``model.mscseg_image_size`` (None = native).
    """
    import json

    torch, _ = import_torch()
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        raise InstsegError(f"which must be 'best' or 'last', got '{which}'")
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise InstsegError(f"{run_json}: not a Mask R-CNN run folder (run.json missing); train one with instseg-train")
    settings = json.loads(run_json.read_text()).get("settings", {})
    weights_file = run_dir / f"{which}.pt"
    if not weights_file.is_file():
        raise InstsegError(f"{weights_file}: weights file missing from the run folder")
    model = build_maskrcnn(
        "none", detections_per_image=settings.get("detections_per_image", 300),
        min_size=settings.get("min_size", DEFAULT_MIN_SIZE), max_size=settings.get("max_size", DEFAULT_MAX_SIZE),
        **settings.get("model_options", {}),
    )
    model.load_state_dict(read_state_dict(weights_file))
    model.mscseg_image_size = settings.get("image_size")
    model.eval()
    return model.to(resolve_device(device))


def predict_instances(
    model, images: Sequence[np.ndarray], score_threshold: float = 0.05, device: str | None = None, image_size: int | None = None
) -> list[dict[str, np.ndarray]]:
    """Instances of each H x W x 3 float32 image, at that image's size.

    Returns per image: masks N x H x W bool (mask probability > 0.5), mask_probs N x H x W
    float32, boxes N x 4 float32 xyxy (pixels), scores N float32 (descending). image_size
    (default: the run's, ``model.mscseg_image_size``) resizes each image to that square
    first, as in training, and the outputs back.
    """
    torch, _ = import_torch()
    import torch.nn.functional as F

    torch_device = resolve_device(device) if device is not None else next(model.parameters()).device
    model.to(torch_device).eval()
    size = image_size if image_size is not None else getattr(model, "mscseg_image_size", None)
    outputs = []
    for image in images:
        image = np.asarray(image, np.float32)
        if image.ndim != 3 or image.shape[2] != 3:
            raise InstsegError(f"expected an H x W x 3 image, got shape {image.shape}")
        height, width = image.shape[:2]
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch_device)
        if size:
            tensor = F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        with torch.no_grad():
            result = model([tensor])[0]
        keep = result["scores"] >= score_threshold
        scores = result["scores"][keep]
        boxes = result["boxes"][keep]
        probs = result["masks"][keep][:, 0]
        if size and len(scores):
            probs = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            boxes = boxes * torch.tensor([width / size, height / size, width / size, height / size], device=boxes.device)
        if size and not len(scores):
            probs = torch.zeros((0, height, width))
        probs = probs.float().cpu().numpy()
        outputs.append({
            "masks": probs > 0.5, "mask_probs": probs.astype(np.float32, copy=False),
            "boxes": boxes.float().cpu().numpy().reshape(-1, 4), "scores": scores.float().cpu().numpy(),
        })
    return outputs


def lowres_probs(mask_probs: np.ndarray, longest_side: int = 256) -> np.ndarray:
    """N x h x w uint8 (probability x 255) with the longest side ``longest_side`` (SAM's low-res mask frame)."""
    import torch
    import torch.nn.functional as F

    count, height, width = mask_probs.shape
    scale = longest_side / max(height, width)
    size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
    if count == 0:
        return np.zeros((0,) + size, np.uint8)
    resized = F.interpolate(torch.from_numpy(np.asarray(mask_probs, np.float32))[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return np.clip(np.round(resized.numpy() * 255.0), 0, 255).astype(np.uint8)


def probs_sidecar_path(results_json: str | Path) -> Path:
    """``maskrcnn.json`` -> ``maskrcnn.probs.npz`` (low-res mask probabilities used by SAM's mask prompt)."""
    results_json = Path(results_json)
    return results_json.with_name(results_json.stem + ".probs.npz")


def predict_to_coco(
    run_dir: str | Path,
    dataset,
    names: Sequence[str],
    gt: dict | str | Path,
    out_json: str | Path,
    *,
    which: str = "best",
    score_threshold: float = 0.05,
    device: str | None = None,
    overwrite: bool = False,
    save_probs: bool = True,
    quiet: bool = True,
) -> Path:
    """Predict ``names`` with a trained run and write COCO results (RLE masks, scores, xywh boxes) to ``out_json``.

    Image ids come from ``gt`` (a COCO dict or its path) by file stem. With ``save_probs``,
    ``<stem>.probs.npz`` beside it keeps each image's mask probabilities at SAM's low-res
    frame (``probs_<image_id>``: N x h x w uint8, ``scores_<image_id>``: N), in result order.
    """
    from . import coco

    out_json = Path(out_json)
    check_can_write(out_json, overwrite)
    if save_probs:
        check_can_write(probs_sidecar_path(out_json), overwrite)
    if not isinstance(gt, dict):
        gt = coco.load_coco(gt)
    ids = coco.image_id_by_name(gt)
    missing = [name for name in names if name not in ids]
    if missing:
        raise InstsegError(f"{len(missing)} image(s) of the split not in the ground truth: {', '.join(missing[:10])}",
                           None if isinstance(gt, dict) else gt)
    samples = dataset.subset(list(names))
    model = load_model(run_dir, which=which, device=device)
    from tqdm.auto import tqdm

    results: list[dict] = []
    sidecar: dict[str, np.ndarray] = {}
    for sample in tqdm(samples, total=len(names), desc="mask r-cnn", disable=quiet):
        prediction = predict_instances(model, [sample.image], score_threshold=score_threshold)[0]
        image_id = ids[sample.name]
        results.extend(coco.instances_to_results(image_id, prediction["masks"], prediction["scores"], prediction["boxes"]))
        if save_probs:
            sidecar[f"probs_{image_id}"] = lowres_probs(prediction["mask_probs"])
            sidecar[f"scores_{image_id}"] = prediction["scores"]
    coco.write_coco(out_json, results)
    if save_probs:
        partial = probs_sidecar_path(out_json).with_name(probs_sidecar_path(out_json).name + ".partial.npz")
        np.savez_compressed(partial, **sidecar)
        os.replace(partial, probs_sidecar_path(out_json))
    return out_json


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("instseg-train", description="Fine-tune Mask R-CNN (ResNet-50-FPN v2) on cell instances.")
    add_dataset_arguments(parser)
    parser.add_argument("--split", required=True, help="split JSON (made with seed --seed if it does not exist)")
    parser.add_argument("--out", required=True, help="run folder (run.json, history.csv, best.pt, last.pt)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--image-size", type=int, default=None, help="resize images to N x N (default: native size)")
    parser.add_argument("--weights", default="coco", help="coco (torchvision COCO_V1), none (random init) or a .pth path")
    parser.add_argument("--detections-per-image", type=int, default=300)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after the epoch that passes this wall time")
    parser.add_argument("--predictions", default=None, help="also write gt.json and maskrcnn.json for the validation images here")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from data.split import load_or_make_split, read_split

        dataset = open_dataset(args)
        world, rank, _ = _distributed()
        if world > 1 and not Path(args.split).is_file():
            raise InstsegError(f"{args.split}: split file missing; make it before a distributed run")
        split = load_or_make_split(args.split, dataset.names, seed=args.seed, source=str(args.data)) if rank == 0 else read_split(args.split, dataset.names)
        if args.predictions and rank == 0:
            for name in ("gt.json", "maskrcnn.json"):
                if not args.resume:
                    check_can_write(Path(args.predictions) / name, args.overwrite)
        record = train_maskrcnn(
            dataset, split, args.out, image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, weights=args.weights, detections_per_image=args.detections_per_image,
            resume=args.resume, overwrite=args.overwrite, device=args.device, num_workers=args.num_workers, seed=args.seed,
            quiet=args.quiet, split_path=args.split, max_minutes=args.max_minutes,
        )
        if args.predictions and rank == 0 and split["val"]:
            from . import coco

            predictions = Path(args.predictions)
            gt = coco.dataset_to_coco(list(dataset.subset(split["val"])))
            check_can_write(predictions / "gt.json", args.overwrite or args.resume)
            coco.write_coco(predictions / "gt.json", gt)
            predict_to_coco(args.out, dataset, split["val"], gt, predictions / "maskrcnn.json", device=args.device,
                            overwrite=args.overwrite or args.resume, quiet=args.quiet)
        if not args.quiet and rank == 0:
            print(f"{args.out}: {record['status']} after {record['epochs_done']} epochs; best epoch {record['best_epoch']} "
                  f"(loss {record['best_loss']}); {record['wall_time_s']:.0f} s")
    finally:
        _end_distributed()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv, resume_hint="continue with --resume")


def _end_distributed() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
