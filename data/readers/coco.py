"""COCO instance JSON: ``images`` (``id``, ``file_name``, ``height``, ``width``) and
``annotations`` (``image_id``, ``segmentation`` as polygons or RLE, ``iscrowd``).

Segmentations are decoded by the one COCO codec (``data.coco_codec``): polygon lists
(rasterised by pycocotools, as COCOeval does), uncompressed RLE (``counts`` a list) and
compressed RLE (``counts`` a string). Annotation k of an image (in file
order, after filtering) gets label k; later annotations lie on top. Crowd annotations
(``iscrowd: 1``, a group of cells in one region) are by default kept as one region each
(``crowd="instance"``, so that the semantic mask stays right); ``crowd="skip"`` leaves them
out, ``crowd="error"`` refuses a file that has any. Images are looked for by
``file_name`` in the ``images`` folder (when given) and relative to the JSON file.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..coco_codec import decode_rle, polygons_to_counts, rle_size, rle_to_counts
from ..dataset import Dataset, Entry
from ..errors import DatasetError
from ..imageio import read_image
from .jsonfile import detect_json, find_image, json_head, load_json, resolve_json

CROWD_MODES = ("instance", "skip", "error")


def looks_like_coco(path: Path) -> bool:
    head = json_head(path)
    return '"images"' in head and '"file_name"' in head


def detect(path: str | Path) -> bool:
    return detect_json(Path(path), looks_like_coco)


def _check_segmentation(segmentation: Any) -> str:
    """'polygons', 'rle' or 'empty'; ``ValueError`` for anything else."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "empty"
        for polygon in segmentation:
            if not isinstance(polygon, list) or len(polygon) % 2 or not all(isinstance(v, (int, float)) for v in polygon):
                raise ValueError("a polygon must be a flat list [x1, y1, x2, y2, ...] of numbers")
        return "polygons"
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise ValueError(f"RLE size must be [height, width], got {size!r}")
        if not isinstance(segmentation["counts"], (list, str)):
            raise ValueError("RLE counts must be a list (uncompressed) or a string (compressed)")
        try:
            rle_to_counts(segmentation)
        except DatasetError as error:
            raise ValueError(error.problem) from None
        return "rle"
    raise ValueError("segmentation must be a list of polygons or an RLE {'counts', 'size'}")


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """H x W bool mask of one annotation's segmentation (polygons, or RLE of size ``[height, width]``), by ``data.coco_codec``."""
    if isinstance(segmentation, list):
        polygons = [polygon for polygon in segmentation if len(polygon) >= 6]
        if not polygons:
            return np.zeros((height, width), bool)
        return decode_rle({"size": [height, width], "counts": polygons_to_counts(polygons, height, width)})
    rle_height, rle_width = rle_size(segmentation)
    if (rle_height, rle_width) != (height, width):
        raise ValueError(f"RLE size is {rle_width}x{rle_height} (WxH) but the image entry says {width}x{height}")
    return decode_rle(segmentation)


def _labels(annotations: list[dict], height: int, width: int, json_path: Path, file_name: str) -> np.ndarray:
    labels = np.zeros((height, width), np.int32)
    for label, annotation in enumerate(annotations, start=1):
        try:
            mask = decode_segmentation(annotation["segmentation"], height, width)
        except Exception as error:  # noqa: BLE001 - a bad RLE string is bad input
            raise DatasetError(f"image '{file_name}', annotation id {annotation.get('id')}: cannot decode segmentation ({error})", json_path) from None
        labels[mask] = label
    return labels


def _category_ids(categories: list[dict], category: str | int, json_path: Path) -> set:
    by_name = {str(item.get("name")): item.get("id") for item in categories}
    ids = {item.get("id") for item in categories}
    if str(category) in by_name:
        return {by_name[str(category)]}
    try:
        if int(category) in ids:
            return {int(category)}
    except (TypeError, ValueError):
        pass
    known = ", ".join(f"{item.get('id')}={item.get('name')}" for item in categories) or "none"
    raise DatasetError(f"category '{category}' not in the file (categories: {known})", json_path)


def read(path: str | Path, images: str | Path | None = None, category: str | int | None = None, crowd: str = "instance") -> Dataset:
    """A COCO instance JSON (or a folder holding exactly one) with its images.

    ``images``: folder of the images; ``category``: keep only this category (name or id);
    ``crowd``: 'instance' (default), 'skip' or 'error' for ``iscrowd`` annotations.
    Every image entry is a sample; one without annotations has no cells.
    """
    json_path = resolve_json(path, looks_like_coco, "COCO")
    if crowd not in CROWD_MODES:
        raise DatasetError(f"crowd must be one of {', '.join(CROWD_MODES)}, got '{crowd}'", json_path)
    data = load_json(json_path, "COCO")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError("not a COCO instance file (expected an object with an 'images' list)", json_path)
    if not isinstance(data.get("annotations"), list):
        raise DatasetError("COCO file has no 'annotations' list", json_path)
    keep = None if category is None else _category_ids(data.get("categories") or [], category, json_path)

    records: dict[Any, dict] = {}
    for index, item in enumerate(data["images"]):
        missing = [key for key in ("id", "file_name", "height", "width") if not isinstance(item, dict) or key not in item]
        if missing:
            raise DatasetError(f"image entry {index} lacks {', '.join(missing)}", json_path)
        for key in ("height", "width"):
            value = item[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value) or value < 1:
                raise DatasetError(f"image entry {index} ('{item['file_name']}'): {key} must be a positive integer, got {value!r}", json_path)
        if item["id"] in records:
            raise DatasetError(f"two image entries share the id {item['id']}", json_path)
        records[item["id"]] = {"image": item, "annotations": []}
    for index, annotation in enumerate(data["annotations"]):
        where = f"annotation {index} (id {annotation.get('id')})" if isinstance(annotation, dict) else f"annotation {index}"
        if not isinstance(annotation, dict) or "image_id" not in annotation or "segmentation" not in annotation:
            raise DatasetError(f"{where} lacks image_id or segmentation", json_path)
        if annotation["image_id"] not in records:
            raise DatasetError(f"{where} refers to image id {annotation['image_id']}, which is not in 'images'", json_path)
        if keep is not None and annotation.get("category_id") not in keep:
            continue
        if annotation.get("iscrowd", 0):
            if crowd == "error":
                raise DatasetError(f"{where} is a crowd annotation (iscrowd=1); pass --crowd instance or --crowd skip", json_path)
            if crowd == "skip":
                continue
        try:
            kind = _check_segmentation(annotation["segmentation"])
        except ValueError as error:
            raise DatasetError(f"{where}: {error}", json_path) from None
        if kind != "empty":
            records[annotation["image_id"]]["annotations"].append(annotation)

    entries = []
    for record in records.values():
        item = record["image"]
        file_name = str(item["file_name"])
        height, width = int(item["height"]), int(item["width"])
        image_path = find_image(file_name, json_path, images)
        entries.append(
            Entry(
                name=Path(file_name).stem,
                source=str(image_path),
                load_image=lambda p=image_path: read_image(p),
                load_labels=lambda a=record["annotations"], h=height, w=width, f=file_name: _labels(a, h, w, json_path, f),
                mask_source=str(json_path),
            )
        )
    return Dataset(entries, str(json_path), "coco")
