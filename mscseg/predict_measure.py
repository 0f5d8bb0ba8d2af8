"""Measurements and per-image outputs of ``mscseg.predict``: connected components, per-cell shapes, the
overlay, COCO detections and the files written for each image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data.units import PixelSize

from .exports import OutputOptions
from .predict_tiles import relabel

CELL_COLUMNS = ["image", "cell", "area_px", "perimeter_px", "major_axis_px", "minor_axis_px", "elongation",
                "centroid_x", "centroid_y", "score"]


def measure_cells(labels: np.ndarray, name: str, scores: dict[int, float] | None = None,
                  pixel_size: PixelSize | None = None) -> pd.DataFrame:
    """One row per label: area (px), perimeter (px), major/minor axis (px, from second moments), elongation, centroid;
    with a pixel size also area (µm²), perimeter and axes (µm) and the pixel size (``data.units.with_micrometres``)."""
    from skimage.measure import regionprops

    from data.units import with_micrometres

    rows = []
    for region in regionprops(labels):
        major, minor = float(region.axis_major_length), float(region.axis_minor_length)
        rows.append({
            "image": name,
            "cell": int(region.label),
            "area_px": int(region.area),
            "perimeter_px": float(region.perimeter),
            "major_axis_px": major,
            "minor_axis_px": minor,
            "elongation": major / minor if minor > 0 else float("nan"),
            "centroid_x": float(region.centroid[1]),
            "centroid_y": float(region.centroid[0]),
            "score": (scores or {}).get(int(region.label), float("nan")),
        })
    return with_micrometres(pd.DataFrame(rows, columns=CELL_COLUMNS), labels, pixel_size)


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8: the micrograph with a light fill and a coloured outline per cell."""
    from skimage.segmentation import find_boundaries

    base = (np.clip(image, 0, 1) * 255).astype(np.float32)
    rng = np.random.default_rng(0)
    palette = np.vstack([[0, 0, 0], rng.integers(60, 256, size=(max(int(labels.max()), 1), 3))]).astype(np.float32)
    colours = palette[labels]
    inside = labels > 0
    base[inside] = 0.75 * base[inside] + 0.25 * colours[inside]
    edges = find_boundaries(labels, mode="inner")
    base[edges] = colours[edges]
    return base.astype(np.uint8)


def components(mask: np.ndarray, min_area: int = 0) -> np.ndarray:
    """8-connected components of a binary mask as int32 labels, components under ``min_area`` px dropped."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if min_area > 0 and count:
        areas = np.bincount(labels.ravel())
        small = np.flatnonzero(areas < min_area)
        labels[np.isin(labels, small[small > 0])] = 0
        labels, _ = relabel(labels)
    return labels.astype(np.int32)


def size_note(name: str, height: int, width: int, geometry: dict | None, tiles: int) -> str:
    """One line when an image's size differs from the training images' ('' when it is the same or unknown)."""
    if not geometry or (height, width) == (geometry["native_height"], geometry["native_width"]):
        return ""
    return (f"note: {name} is {width}x{height} px, the training images were {geometry['native_width']}x{geometry['native_height']}; "
            f"shown to the model at the training magnification in {tiles} tile(s)")


def write_image_outputs(folder: Path, name: str, image: np.ndarray, labels: np.ndarray, cells: pd.DataFrame,
                        outputs: OutputOptions | None = None) -> None:
    """masks/, labels/ (16-bit PNG, 32-bit TIFF above 65535 cells), overlays/, cells/ and the ``outputs`` asked for
    (rois/, geojson/) of one image into ``folder``."""
    from data.imageio import write_labels, write_png
    from data.outputs import write_csv

    write_png(folder / "masks" / f"{name}.png", ((labels > 0) * 255).astype(np.uint8))
    write_labels(folder / "labels" / f"{name}{'.png' if labels.max(initial=0) <= 65535 else '.tif'}", labels)
    write_png(folder / "overlays" / f"{name}.png", overlay(image, labels))
    write_csv(folder / "cells" / f"{name}.csv", cells)
    if outputs is not None:
        outputs.write(folder, name, labels, cells)



def cell_detections(image_id: int, labels: np.ndarray, scores: dict[int, float], probability: np.ndarray | None) -> list[dict]:
    """COCO results (RLE) of one label image; score = the instance's score, or its mean probability (semantic)."""
    from torch_instseg.coco import labels_to_annotations

    detections = []
    ids = np.arange(1, int(labels.max()) + 1) if labels.size else np.zeros(0, int)
    if probability is not None and ids.size:
        sums = np.bincount(labels.ravel(), weights=probability.ravel().astype(np.float64), minlength=ids.size + 1)
        areas = np.bincount(labels.ravel(), minlength=ids.size + 1)
        mean_probability = {int(i): float(sums[i] / areas[i]) for i in ids if areas[i]}
    for label, annotation in zip(np.unique(labels[labels > 0]), labels_to_annotations(labels, image_id)):
        score = scores.get(int(label)) if probability is None else mean_probability[int(label)]
        detections.append({"image_id": image_id, "category_id": annotation["category_id"],
                           "segmentation": annotation["segmentation"], "score": float(score if score is not None else 1.0),
                           "bbox": annotation["bbox"], "area": annotation["area"]})
    return detections
