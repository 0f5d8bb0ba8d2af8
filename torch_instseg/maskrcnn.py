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
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from data.cli import add_dataset_arguments, make_parser, open_dataset, run_cli
from data.errors import MscsegError
from data.geometry import maskrcnn_training_geometry
from data.lock import lock_output_folder
from data.outputs import check_can_write
from data.lifecycle import EpochSteps, RunSpec, TrainingRun, open_run, run_epochs
from data.run_record import HISTORY_CSV, RUN_JSON, RunRecord, library_versions, read_record
from data.settings import add_arguments, from_arguments, problem_text

from .errors import InstsegError
from .reproducible import make_reproducible
from .settings import (AUGMENTATION, DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE, MASKRCNN_RESUME_MUST_MATCH, MaskRCNNSettings,
                       head_channels, model_option_problems, weights_source)
from .settings import LR_SCHEDULES, V2_HEAD_CHANNELS  # noqa: F401 - their old home, re-exported
from .weights import COCO_WEIGHTS_FILE, ensure_coco_weights

_versions = library_versions  # torch_instseg.sam records versions through this name
MODEL_NAME = "maskrcnn_resnet50_fpn_v2"
LOSS_COMPONENTS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
RUN_FILES = (RUN_JSON, HISTORY_CSV, "best.pt", "last.pt")
RESUME_MUST_MATCH = MASKRCNN_RESUME_MUST_MATCH


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


def _narrow_heads(model, channels: int, num_classes: int) -> None:
    """Replace the v2 box and mask heads (4 convs of 256 channels each) by the same heads with ``channels`` channels.

    The RoI heads then cost about (channels / 256)^2 of torchvision's: the choice for a CPU
    run from random weights. The box head keeps its 1024-wide fully connected layer.
    """
    from torch import nn
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    in_channels = model.backbone.out_channels
    pooled = model.roi_heads.box_roi_pool.output_size
    pooled = (pooled, pooled) if isinstance(pooled, int) else tuple(pooled)
    representation = model.roi_heads.box_predictor.cls_score.in_features
    model.roi_heads.box_head = FastRCNNConvFCHead((in_channels, *pooled), [channels] * 4, [representation], norm_layer=nn.BatchNorm2d)
    model.roi_heads.box_predictor = FastRCNNPredictor(representation, num_classes)
    model.roi_heads.mask_head = MaskRCNNHeads(in_channels, [channels] * 4, 1, norm_layer=nn.BatchNorm2d)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(channels, channels, num_classes)


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
    ``box_batch_size_per_image`` or ``rpn_post_nms_top_n_train``, to make CPU runs cheaper),
    ``anchor_sizes``: 5 anchor sizes in pixels, one per FPN level (default 32-512), and
    ``head_channels``: channels of the box and mask heads' convolutions (default 256; fewer
    only from random weights, since the COCO heads have 256).
    """
    import_torch()
    refused = model_option_problems(model_options, weights)
    if refused:
        raise InstsegError(problem_text(refused))
    options = {"box_detections_per_img": int(detections_per_image), "min_size": int(min_size), "max_size": int(max_size),
               **model_options}
    anchors = _anchor_generator(options.pop("anchor_sizes", None))
    narrow = head_channels(options.pop("head_channels", None))
    model = _build_network(weights, num_classes, download, options, narrow)
    if anchors is not None:
        model.rpn.anchor_generator = anchors
    return model


def _build_network(weights: str | os.PathLike | None, num_classes: int, download: bool, options: dict[str, Any],
                   head_channels: int | None = None):
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, maskrcnn_resnet50_fpn_v2

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
        model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes, **options)
        if head_channels is not None:
            _narrow_heads(model, head_channels, num_classes)
        return model
    state = read_state_dict(source)
    classes_in_file = state.get("roi_heads.box_predictor.cls_score.weight")
    if classes_in_file is None:
        raise InstsegError(f"{source}: not a Mask R-CNN state dict (no roi_heads.box_predictor.cls_score.weight)")
    file_classes = int(classes_in_file.shape[0])
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=file_classes, **options)
    if head_channels is not None:
        _narrow_heads(model, head_channels, file_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0:2]
        raise InstsegError(f"{source}: weights do not fit {MODEL_NAME} ({' '.join(first_line)})") from None
    if file_classes != num_classes:
        _replace_predictors(model, num_classes)
    return model


def _anchor_generator(sizes: Any):
    """The RPN's anchors for ``sizes`` (one size in pixels per FPN level, 5 levels); None keeps torchvision's 32-512.

    The anchors keep torchvision's aspect ratios (0.5, 1, 2), so the RPN head's shape, and any
    checkpoint, stay the same; sizes matched to the cells (for example 16-256 for cells
    15-40 px across) replace torchvision's 32-512.
    """
    if sizes is None:
        return None
    refused = model_option_problems({"anchor_sizes": sizes}, "none")
    if refused:
        raise InstsegError(problem_text(refused))
    sizes = tuple(float(size) for size in sizes)
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    return AnchorGenerator(tuple((size,) for size in sizes), ((0.5, 1.0, 2.0),) * len(sizes))


def freeze_batchnorm(model) -> None:
    """Put every BatchNorm layer in eval mode (running statistics used and not updated)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


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


def _resolve_training_device(device: str | None, local_rank: int, world: int):
    import torch

    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if (device in (None, "cuda", "auto") and torch.cuda.is_available()) else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if world > 1 and torch.cuda.is_available() and device in (None, "cuda", "auto"):
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
        return torch_device
    return resolve_device(device)


def _loaders(settings: MaskRCNNSettings, arrays: tuple, device, world: int):
    """(train loader, its sampler or None, validation loader or None)."""
    import torch

    train_images, train_labels, val_images, val_labels = arrays
    train_set = InstanceTrainingSet(train_images, train_labels, settings.augmentation, settings.seed)
    val_set = InstanceTrainingSet(val_images, val_labels, None, settings.seed)
    train_sampler = val_sampler = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        train_sampler = DistributedSampler(train_set, shuffle=True, seed=settings.seed)
        val_sampler = DistributedSampler(val_set, shuffle=False) if len(val_set) else None
    options = {"batch_size": settings.batch_size, "collate_fn": collate, "num_workers": settings.num_workers,
               "pin_memory": device.type == "cuda"}
    train_loader = torch.utils.data.DataLoader(train_set, shuffle=train_sampler is None, sampler=train_sampler,
                                               generator=torch.Generator().manual_seed(settings.seed), **options)
    val_loader = torch.utils.data.DataLoader(val_set, shuffle=False, sampler=val_sampler, **options) if len(val_set) else None
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


def train_one_epoch(net, loader, sampler, device, optimizer, warmup, epoch: int, progress) -> dict[str, float]:
    """Mean training losses of one epoch (augmentation drawn for ``epoch``)."""
    loader.dataset.set_epoch(epoch)
    if sampler is not None:
        sampler.set_epoch(epoch)
    net.train()
    return _epoch_losses(net, loader, device, optimizer, warmup, progress)


def evaluate_loss(net, loader, device, seed: int) -> dict[str, float]:
    """Mean validation losses: train mode (torchvision returns losses only there), BatchNorm frozen, no gradients, fixed seed."""
    import torch

    net.train()
    freeze_batchnorm(net)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _epoch_losses(net, loader, device)


def save_checkpoint(out_dir: Path, state: TrainingState, epoch: int, improved: bool, monitored: float) -> None:
    """``last.pt`` (model, optimiser, scheduler, counters) and, when ``improved``, ``best.pt``, each atomically."""
    import torch

    weights = state.model.state_dict()
    if improved:
        torch.save({"model": weights, "epoch": epoch, "monitored_loss": monitored}, _partial(out_dir / "best.pt"))
        os.replace(_partial(out_dir / "best.pt"), out_dir / "best.pt")
    torch.save({"model": weights, "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
                "epoch": epoch, "best_loss": state.best_loss, "best_epoch": state.best_epoch}, _partial(out_dir / "last.pt"))
    os.replace(_partial(out_dir / "last.pt"), out_dir / "last.pt")


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
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    quiet: bool = False,
    split_path: str | Path | None = None,
    download: bool = True,
    **options: Any,
) -> dict:
    """Train Mask R-CNN on ``split["train"]``, validate on ``split["val"]``; returns run.json's content.

    ``settings`` (or its fields as keyword ``options``) are the recipe; the run folder's life
    cycle (refusals, ``resume`` from ``last.pt`` with the same settings and split, ``overwrite``,
    the time budget, status words) is ``data.lifecycle``'s. Bad input raises
    ``InstsegError``/``DatasetError``/``RunFolderError`` before anything is written.
    """
    torch, _ = import_torch()
    try:
        settings = replace(settings or MaskRCNNSettings(), **options).checked()
    except TypeError as error:
        raise InstsegError(f"unknown Mask R-CNN setting ({error})") from None
    world, rank, local_rank = _distributed()
    train_names, val_names = list(split.get("train", [])), list(split.get("val", []))
    split_record = {"path": str(split_path) if split_path else None, "seed": split.get("seed"),
                    "train": train_names, "val": val_names}
    run = open_run(out_dir, run_spec(settings, split_record), resume, overwrite, writes=rank == 0)
    if run.done:
        return run.record.to_dict()
    check_training_inputs(settings, split, split_path, run.start_epoch > 0, download)
    arrays = (*_load_arrays(dataset, train_names, settings.image_size), *_load_arrays(dataset, val_names, settings.image_size))
    torch_device = _resolve_training_device(device, local_rank, world)
    reproducibility = make_reproducible(settings.deterministic)
    state = build_training_state(settings, torch_device, run.out_dir, run.start_epoch > 0, download)
    loaders = _loaders(settings, arrays, torch_device, world)
    net = state.model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(state.model, device_ids=[torch_device.index] if torch_device.type == "cuda" else None)
    run.start({
        "task": "instance segmentation (2 classes: background, cell)",
        "weights_source": settings.weights if settings.weights != "coco" else f"coco ({COCO_WEIGHTS_FILE})",
        "n_train": len(train_names), "n_val": len(val_names), "device": str(torch_device), "world_size": world,
        "files": {"best": "best.pt", "last": "last.pt", "history": HISTORY_CSV},
        "best_by": "val_loss" if loaders[2] is not None else "train_loss (no validation images)",
        "reproducibility": reproducibility,
        "geometry": maskrcnn_training_geometry(dataset, train_names, settings.image_size, settings.min_size, settings.max_size),
    })
    record = run_epochs(run, epoch_steps(settings, state, net, loaders, torch_device, run, not quiet and rank == 0),
                        show=not quiet and rank == 0)
    if world > 1:
        torch.distributed.barrier()
    return record


def epoch_steps(settings: MaskRCNNSettings, state: TrainingState, net, loaders: tuple, device, run: TrainingRun,
                show: bool) -> EpochSteps:
    """Mask R-CNN's "train one epoch", "evaluate", plateau step and checkpoint for ``data.lifecycle.run_epochs``."""
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
                losses = train_one_epoch(net, train_loader, train_sampler, device, state.optimizer, warmup, epoch - 1, batches)
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

    return EpochSteps(train=train, evaluate=lambda epoch: evaluate_loss(net, val_loader, device, settings.seed) if val_loader is not None else None,
                      save=save, row=row, adjust=adjust)


def _partial(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".partial")


# ---------------------------------------------------------------- inference

def load_model(run_dir: str | Path, which: str = "best", device: str | None = None):
    """The trained model of a run folder (``best.pt`` or ``last.pt``), in eval mode on ``device``.

    The run's image size is kept on the model as ``model.mscseg_image_size`` (None = native).
    """
    torch, _ = import_torch()
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        raise InstsegError(f"which must be 'best' or 'last', got '{which}'")
    if not (run_dir / RUN_JSON).is_file():
        raise InstsegError("not a Mask R-CNN run folder (run.json missing); train one with instseg-train", run_dir / RUN_JSON)
    try:
        settings = read_record(run_dir).settings
    except MscsegError as error:
        raise InstsegError(error.problem, error.path) from None
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
    add_arguments(parser, MaskRCNNSettings)
    parser.add_argument("--head-channels", type=int, default=None,
                        help="the model option head_channels: channels of the box and mask head convolutions "
                             "(default 256, torchvision's; fewer only with --weights none)")
    parser.add_argument("--predictions", default=None, help="also write gt.json and maskrcnn.json for the validation images here")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if _distributed()[1] == 0:
        lock_output_folder(args.out)
    options = dict(args.model_options, **({} if args.head_channels is None else {"head_channels": args.head_channels}))
    settings = from_arguments(MaskRCNNSettings, args, model_options=options)
    settings.checked()
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
        record = train_maskrcnn(dataset, split, args.out, settings, resume=args.resume, overwrite=args.overwrite,
                                device=args.device, quiet=args.quiet, split_path=args.split)
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
