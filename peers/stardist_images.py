"""StarDist's images: the network input (grey, csbdeep-normalised per image), the resize to ``image_size``
(bilinear images, nearest labels, as ``predict_instances(scale=)`` zooms), the training arrays with StarDist's
hole-filled labels, the fixed validation crops, the training patch side and StarDist's example augmentation.
csbdeep, scipy and stardist are imported inside the functions; ``peers.stardist`` re-exports every name here.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import PeerError
from .stardist_settings import PERCENTILES, StardistSettings


def network_input(image: np.ndarray) -> np.ndarray:
    """H x W x 3 (or H x W) float image -> H x W float32 grey, normalised per image (percentiles 1 and 99.8 to 0 and 1)."""
    from csbdeep.utils import normalize

    grey = np.asarray(image, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=-1)
    return normalize(grey, *PERCENTILES, axis=(0, 1)).astype(np.float32, copy=False)


def _scale(shape: Sequence[int], image_size: int | None) -> tuple[float, float] | None:
    """(sy, sx) that brings an H x W image to ``image_size`` x ``image_size`` (None: native size)."""
    if not image_size or tuple(shape[:2]) == (image_size, image_size):
        return None
    return image_size / shape[0], image_size / shape[1]


def _resized(grey: np.ndarray, labels: np.ndarray, image_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Grey image (bilinear) and labels (nearest) at ``image_size`` x ``image_size``, as ``predict_instances(scale=)`` zooms."""
    scale = _scale(grey.shape, image_size)
    if scale is None:
        return grey, labels
    from scipy import ndimage

    return ndimage.zoom(grey, scale, order=1).astype(np.float32), ndimage.zoom(labels, scale, order=0)


def _training_arrays(dataset, names: Sequence[str], image_size: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Network inputs (H x W float32) and StarDist's hole-filled labels (H x W int32) of ``names``."""
    from stardist import fill_label_holes

    images, labels = [], []
    for sample in dataset.subset(list(names)):
        grey, label = _resized(network_input(sample.image), sample.labels.astype(np.int32), image_size)
        images.append(grey)
        labels.append(fill_label_holes(label).astype(np.int32))
    return images, labels


def _starts(length: int, patch: int) -> list[int]:
    """Patch starts that cover ``length`` pixels with as little overlap as possible."""
    count = max(1, math.ceil(length / patch))
    return sorted({int(round(v)) for v in np.linspace(0, length - patch, count)})


def validation_crops(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], patch: int) -> tuple[list, list]:
    """Fixed ``patch`` x ``patch`` crops that cover every validation image (StarDist samples random ones)."""
    crops_x, crops_y = [], []
    for image, label in zip(images, labels):
        for top in _starts(image.shape[0], patch):
            for left in _starts(image.shape[1], patch):
                crops_x.append(image[top:top + patch, left:left + patch])
                crops_y.append(label[top:top + patch, left:left + patch])
    return crops_x, crops_y


def patch_side(settings: StardistSettings, shapes: Sequence[tuple[int, int]]) -> int:
    """The training patch side: ``patch_size``, at most the smallest image side, a multiple of 2^depth x grid."""
    step = max(settings.grid) * 2 ** settings.unet_n_depth
    side = (min([settings.patch_size, *[min(shape) for shape in shapes]]) // step) * step
    if side < step:
        raise PeerError(f"stardist: images of {min(min(s) for s in shapes)} px are smaller than one {step} px network block; "
                        "set image_size larger or unet_n_depth smaller")
    return side


def augmenter(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """StarDist's example augmentation of one square patch: flips, transposition, intensity scale and shift, noise."""
    if np.random.rand() > 0.5:
        x, y = x.T, y.T
    for axis in (0, 1):
        if np.random.rand() > 0.5:
            x, y = np.flip(x, axis=axis), np.flip(y, axis=axis)
    x = x * np.random.uniform(0.6, 2.0) + np.random.uniform(-0.2, 0.2)
    x = x + 0.02 * np.random.uniform(0, 1) * np.random.normal(0, 1, x.shape)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)
