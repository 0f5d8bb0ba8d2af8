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
AREA_PERCENTILES = (1, 5, 10, 50)
MIN_AREA_PERCENTILE = 1
MIN_AREA_FRACTION = 0.5


def cell_areas(labels: np.ndarray) -> np.ndarray:
    """Pixel count of each instance label > 0 in an H x W int label image (labels absent get no entry)."""
    counts = np.bincount(labels.ravel().astype(np.int64, copy=False))[1:]
    return counts[counts > 0]


def training_geometry(dataset: Dataset, names: Sequence[str], image_size: int) -> dict:
    """The resize of a whole-image trainer: native size (most common H x W), scale per axis, cell areas (native px).

    ``cell_area_px`` holds percentiles of the instance areas over ``names``
    (``p1``, ``p5``, ``p10``, ``p50``) and ``cells``, the number of instances.
    """
    sizes: Counter[tuple[int, int]] = Counter()
    areas: list[np.ndarray] = []
    for name in names:
        sample = dataset.get(name)
        sizes[sample.labels.shape] += 1
        areas.append(cell_areas(sample.labels))
    (height, width), _ = sizes.most_common(1)[0]
    all_areas = np.concatenate(areas) if areas else np.zeros(0, np.int64)
    area_stats: dict[str, float | int] = {"cells": int(all_areas.size)}
    if all_areas.size:
        area_stats.update({f"p{q}": float(np.percentile(all_areas, q)) for q in AREA_PERCENTILES})
    return {
        "resize": RESIZE_WHOLE,
        "image_size": int(image_size),
        "native_height": int(height),
        "native_width": int(width),
        "native_sizes": {f"{w}x{h}": count for (h, w), count in sorted(sizes.items())},
        "scale_y": image_size / height,
        "scale_x": image_size / width,
        "cell_area_px": area_stats,
    }


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
