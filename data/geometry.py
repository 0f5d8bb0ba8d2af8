"""How a trainer resized its images, and how large its cells were (numpy only).

A semantic trainer resizes each whole training image to ``image_size`` x
``image_size``. ``training_geometry`` records that (native size, scale per axis) and
the training cells' areas, so that prediction can show new images to the model at the
same magnification and drop fragments far smaller than any training cell.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from .dataset import Dataset

RESIZE_WHOLE = "whole image resized to image_size x image_size (bilinear, antialiased when shrinking)"
RESIZE_MASKRCNN = ("whole image resized to image_size x image_size when set, then torchvision's internal resize "
                   "(shorter side to min_size, longer side at most max_size)")
AREA_PERCENTILES = (1, 5, 10, 50)
MIN_AREA_PERCENTILE = 1
MIN_AREA_FRACTION = 0.5


def cell_areas(labels: np.ndarray) -> np.ndarray:
    """Pixel count of each instance label > 0 in an H x W int label image (labels absent get no entry)."""
    counts = np.bincount(labels.ravel().astype(np.int64, copy=False))[1:]
    return counts[counts > 0]


def _native_sizes_and_areas(dataset: Dataset, names: Sequence[str]) -> tuple[Counter, dict[str, float | int]]:
    """(count of each H x W among ``names``, percentiles of their instance areas in native pixels)."""
    sizes: Counter[tuple[int, int]] = Counter()
    areas: list[np.ndarray] = []
    for name in names:
        sample = dataset.get(name)
        sizes[sample.labels.shape] += 1
        areas.append(cell_areas(sample.labels))
    all_areas = np.concatenate(areas) if areas else np.zeros(0, np.int64)
    area_stats: dict[str, float | int] = {"cells": int(all_areas.size)}
    if all_areas.size:
        area_stats.update({f"p{q}": float(np.percentile(all_areas, q)) for q in AREA_PERCENTILES})
    return sizes, area_stats


def _geometry(resize: str, image_size: int | None, sizes: Counter, scale_y: float, scale_x: float,
              area_stats: dict[str, float | int], **extra: float | int | None) -> dict:
    (height, width), _ = sizes.most_common(1)[0]
    return {
        "resize": resize,
        "image_size": None if image_size is None else int(image_size),
        "native_height": int(height),
        "native_width": int(width),
        "native_sizes": {f"{w}x{h}": count for (h, w), count in sorted(sizes.items())},
        "scale_y": float(scale_y),
        "scale_x": float(scale_x),
        **extra,
        "cell_area_px": area_stats,
    }


def training_geometry(dataset: Dataset, names: Sequence[str], image_size: int) -> dict:
    """The resize of a whole-image trainer: native size (most common H x W), scale per axis, cell areas (native px).

    ``cell_area_px`` holds percentiles of the instance areas over ``names``
    (``p1``, ``p5``, ``p10``, ``p50``) and ``cells``, the number of instances.
    """
    sizes, area_stats = _native_sizes_and_areas(dataset, names)
    (height, width), _ = sizes.most_common(1)[0]
    return _geometry(RESIZE_WHOLE, image_size, sizes, image_size / height, image_size / width, area_stats)


def internal_resize_factor(height: int, width: int, min_size: int, max_size: int) -> float:
    """torchvision ``GeneralizedRCNNTransform``'s factor for an H x W image: shorter side to ``min_size``, longer at most ``max_size``."""
    return float(min(min_size / min(height, width), max_size / max(height, width)))


def maskrcnn_training_geometry(dataset: Dataset, names: Sequence[str], image_size: int | None, min_size: int,
                               max_size: int) -> dict:
    """The magnification a Mask R-CNN run trained at: model pixels per native pixel, per axis, and the cell areas.

    The images (native H x W) are resized to ``image_size`` x ``image_size`` when it is
    set, then torchvision resizes internally by ``internal_resize_factor``; ``scale_y`` and
    ``scale_x`` are the product of both, so a new image shown to the network at that scale
    (and not resized again inside) meets cells of the training size.
    """
    sizes, area_stats = _native_sizes_and_areas(dataset, names)
    (height, width), _ = sizes.most_common(1)[0]
    resized = (image_size, image_size) if image_size else (height, width)
    internal = internal_resize_factor(*resized, min_size, max_size)
    return _geometry(RESIZE_MASKRCNN, image_size, sizes, resized[0] / height * internal, resized[1] / width * internal,
                     area_stats, min_size=int(min_size), max_size=int(max_size), internal_resize=internal)


def default_min_area(geometry: dict, scale_y: float, scale_x: float) -> tuple[int, str]:
    """(minimum cell area in the new image's pixels, how it was found) for a new image shown to the model at ``scale_y`` x ``scale_x``.

    Half the training cells' 1st-percentile area, converted from training pixels to
    new-image pixels through the model's pixels (a cell keeps its size in model pixels):
    ``area_new = area_train * (sy_train * sx_train) / (sy_new * sx_new)``. 0 when the
    run recorded no cell areas.
    """
    areas = geometry.get("cell_area_px") or {}
    key = f"p{MIN_AREA_PERCENTILE}"
    if key not in areas:
        return 0, "0 (the training run recorded no cell areas)"
    ratio = (geometry["scale_y"] * geometry["scale_x"]) / (scale_y * scale_x)
    value = int(np.floor(MIN_AREA_FRACTION * areas[key] * ratio))
    return value, (f"{MIN_AREA_FRACTION:g} x the {MIN_AREA_PERCENTILE}st percentile of the training cells' areas "
                   f"({areas[key]:g} px at the training images' size), rescaled to the new images' pixels")
