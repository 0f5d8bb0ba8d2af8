"""Cell instances for Mask R-CNN training: masks and boxes from label images, aligned flips and rotations, the dataset.

numpy (and PIL for resizing); torch only inside ``to_model_inputs`` and the dataset's items.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .settings import AUGMENTATION


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
