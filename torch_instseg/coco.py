"""COCO instance JSON for mscseg: loading with validation, results files and their sidecars.

numpy only (no torch, no TensorFlow). The codec (RLE encode/decode, area, bbox, polygons,
label images <-> annotations and results) is ``data.coco_codec``, re-exported here under
its old names; this module parses and validates whole COCO files against it.

A results file ``<name>.json`` (COCO's list of detections: ``image_id``, ``category_id``,
RLE ``segmentation``, ``score``, ``bbox`` [x, y, w, h], plus per-detection extras such as
``maskrcnn_score`` or ``sam_iou``) may have a sidecar ``<name>.meta.json`` (a JSON object,
for example ``{"score_source": "sam_iou"}``) that ``results_meta`` reads and the instance
table records; ``write_results`` writes both.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from data.coco_codec import (CELL_CATEGORY, BadCountsString, check_counts, counts_to_bbox, counts_to_mask, counts_to_pixels,  # noqa: F401
                             counts_to_string, dataset_to_coco, decode_rle, encode_rle, instances_to_results, is_int, is_mapping,
                             is_number, labels_to_annotations, mask_to_counts, polygons_to_counts, raw_counts, rle_area, rle_size,
                             rle_to_bbox, rle_to_counts, string_to_counts, strings_to_counts, write_coco)
from data.errors import MscsegError
from data.outputs import write_json

from .errors import InstsegError

IN_MEMORY_GT = "<ground truth in memory>"
IN_MEMORY_RESULTS = "<results in memory>"
_NO_COUNTS = np.zeros(0, dtype=np.int64)


def _error(source: str | Path, problem: str) -> InstsegError:
    return InstsegError(f"{source}: {problem}")


# ---------------------------------------------------------------- reading and validation

@dataclass(frozen=True)
class ImageInfo:
    id: int
    file_name: str
    height: int
    width: int


@dataclass
class Instance:
    """One annotation or detection, its mask as uncompressed counts (column-major, background first)."""

    image_id: int
    category_id: int
    counts: np.ndarray
    score: float = math.nan
    iscrowd: bool = False
    ann_id: int = 0


@dataclass
class GroundTruth:
    """A validated COCO ground truth: images by id (sorted), category ids (sorted), instances."""

    images: dict[int, ImageInfo]
    category_ids: list[int]
    instances: list[Instance]
    source: str


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise _error(path, "file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise _error(path, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError:
        raise _error(path, "not valid JSON (not UTF-8 text)") from None


def _segmentation_raw(segmentation: Any, image: ImageInfo, where: str, source: str, allow_polygon: bool) -> bytes | np.ndarray:
    """Checked structure and size of one segmentation; its compressed string (bytes) or counts."""
    if isinstance(segmentation, list):
        if not allow_polygon:
            raise _error(source, f"{where}: segmentation must be an RLE dict {{'size', 'counts'}}, not a polygon")
        return _polygon_counts(segmentation, image, where, source)
    if not is_mapping(segmentation):
        raise _error(source, f"{where}: segmentation must be an RLE dict with 'size' and 'counts'")
    try:
        height, width = rle_size(segmentation)
        if height != image.height or width != image.width:
            raise InstsegError(
                f"mask size {height}x{width} (HxW) does not match image {image.id} "
                f"('{image.file_name}', {image.height}x{image.width})"
            )
        return raw_counts(segmentation)
    except MscsegError as exc:
        raise _error(source, f"{where}: {exc}") from None


def _decode_all(raws: list[bytes | np.ndarray], images: list[ImageInfo], wheres: list[str], source: str) -> list[np.ndarray]:
    """Counts of every segmentation (compressed strings decoded in one pass), each checked against its image."""
    string_positions = [k for k, raw in enumerate(raws) if isinstance(raw, bytes)]
    counts = list(raws)
    try:
        decoded = strings_to_counts([raws[k] for k in string_positions])
    except BadCountsString as exc:
        raise _error(source, f"{wheres[string_positions[exc.index]]}: {exc.problem}") from None
    for k, values in zip(string_positions, decoded):
        counts[k] = values
    if counts:
        lengths = np.array([len(values) for values in counts], dtype=np.int64)
        joined = np.concatenate(counts)
        running = np.r_[0, np.cumsum(joined)]
        ends = np.cumsum(lengths)
        totals = running[ends] - running[ends - lengths]
        expected = np.array([image.height * image.width for image in images], dtype=np.int64)
        if (joined.size and joined.min() < 0) or np.any(totals != expected):
            for values, image, where in zip(counts, images, wheres):
                try:
                    check_counts(values, image.height, image.width)
                except MscsegError as exc:
                    raise _error(source, f"{where}: {exc}") from None
    return counts


def _polygon_counts(polygons: list, image: ImageInfo, where: str, source: str) -> bytes:
    """Polygons rasterised exactly as COCOeval does (``data.coco_codec.polygons_to_counts``)."""
    try:
        return polygons_to_counts(polygons, image.height, image.width)
    except MscsegError as exc:
        raise _error(source, f"{where}: {exc.problem}") from None


def _index_ground_truth(obj: Any, source: str) -> GroundTruth:
    if not is_mapping(obj):
        raise _error(source, "a COCO ground truth must be a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(obj.get(key), list):
            raise _error(source, f"missing or invalid '{key}' (a list is required)")
    images: dict[int, ImageInfo] = {}
    for position, image in enumerate(obj["images"]):
        if not is_mapping(image):
            raise _error(source, f"images[{position}] is not an object")
        for key in ("id", "height", "width"):
            if not is_int(image.get(key)):
                raise _error(source, f"images[{position}] needs an integer '{key}'")
        if not isinstance(image.get("file_name"), str):
            raise _error(source, f"images[{position}] needs a 'file_name' (the file stem)")
        if image["id"] in images:
            raise _error(source, f"image id {image['id']} appears twice")
        images[int(image["id"])] = ImageInfo(int(image["id"]), image["file_name"], int(image["height"]), int(image["width"]))
    category_ids = []
    for position, category in enumerate(obj["categories"]):
        if not is_mapping(category) or not is_int(category.get("id")):
            raise _error(source, f"categories[{position}] needs an integer 'id'")
        category_ids.append(int(category["id"]))
    if len(set(category_ids)) != len(category_ids):
        raise _error(source, "a category id appears twice")
    known_categories = set(category_ids)
    instances, raws, owners, wheres, seen_ids = [], [], [], [], set()
    for position, ann in enumerate(obj["annotations"]):
        where = f"annotations[{position}]"
        if not is_mapping(ann):
            raise _error(source, f"{where} is not an object")
        for key in ("id", "image_id", "category_id"):
            if not is_int(ann.get(key)):
                raise _error(source, f"{where} needs an integer '{key}'")
        if ann["id"] <= 0:
            raise _error(source, f"{where}: annotation id {ann['id']} must be a positive integer (COCOeval treats id 0 as unmatched)")
        if ann["id"] in seen_ids:
            raise _error(source, f"{where}: annotation id {ann['id']} appears twice")
        seen_ids.add(ann["id"])
        if ann["image_id"] not in images:
            raise _error(source, f"{where} refers to unknown image id {ann['image_id']}")
        if ann["category_id"] not in known_categories:
            raise _error(source, f"{where} has category_id {ann['category_id']}, not in 'categories'")
        if "segmentation" not in ann:
            raise _error(source, f"{where} needs a 'segmentation'")
        image = images[ann["image_id"]]
        raws.append(_segmentation_raw(ann["segmentation"], image, where, source, allow_polygon=True))
        owners.append(image)
        wheres.append(where)
        crowd = ann.get("iscrowd", 0)
        if not is_number(crowd) and not isinstance(crowd, bool):
            raise _error(source, f"{where}: 'iscrowd' must be 0 or 1")
        instances.append(Instance(image.id, int(ann["category_id"]), _NO_COUNTS, iscrowd=bool(crowd), ann_id=int(ann["id"])))
    for instance, counts in zip(instances, _decode_all(raws, owners, wheres, source)):
        instance.counts = counts
    return GroundTruth(dict(sorted(images.items())), sorted(category_ids), instances, source)


def index_ground_truth(gt: Mapping | GroundTruth | str | Path) -> GroundTruth:
    """Validated ground truth from a path, a COCO dict or an already indexed ``GroundTruth``."""
    if isinstance(gt, GroundTruth):
        return gt
    if isinstance(gt, (str, Path)):
        return _index_ground_truth(_read_json(gt), str(gt))
    return _index_ground_truth(gt, IN_MEMORY_GT)


def index_results(results: Sequence[Mapping] | str | Path, gt: Mapping | GroundTruth | str | Path) -> list[Instance]:
    """Validated detections (in input order) of a results path or list against the ground truth."""
    truth = index_ground_truth(gt)
    if isinstance(results, (str, Path)):
        return _index_results(_read_json(results), truth, str(results))
    return _index_results(results, truth, IN_MEMORY_RESULTS)


def _index_results(obj: Any, truth: GroundTruth, source: str) -> list[Instance]:
    if not isinstance(obj, list):
        raise _error(source, "COCO results must be a JSON list of detections")
    known_categories = set(truth.category_ids)
    detections, raws, owners, wheres = [], [], [], []
    required = ("image_id", "category_id", "segmentation", "score")
    for position, det in enumerate(obj):
        where = f"detection {position}"
        if not is_mapping(det):
            raise _error(source, f"{where} is not an object")
        if not all(key in det for key in required):
            missing = [key for key in required if key not in det]
            raise _error(source, f"{where} is missing {', '.join(repr(k) for k in missing)}")
        image_id, category_id, score = det["image_id"], det["category_id"], det["score"]
        if not is_int(image_id):
            raise _error(source, f"{where}: 'image_id' must be an integer")
        image = truth.images.get(image_id)
        if image is None:
            raise _error(source, f"{where} refers to image id {image_id}, which is not in the ground truth {truth.source}")
        if not is_int(category_id) or category_id not in known_categories:
            raise _error(source, f"{where} has category_id {category_id!r}, not a category of the ground truth")
        if not is_number(score) or not math.isfinite(score):
            raise _error(source, f"{where}: 'score' must be a finite number")
        raws.append(_segmentation_raw(det["segmentation"], image, where, source, allow_polygon=False))
        owners.append(image)
        wheres.append(where)
        detections.append(Instance(image.id, int(category_id), _NO_COUNTS, score=float(score), ann_id=position + 1))
    for detection, counts in zip(detections, _decode_all(raws, owners, wheres, source)):
        detection.counts = counts
    return detections


def load_coco(path: str | Path) -> dict:
    """Read and validate a COCO ground-truth JSON (``InstsegError`` naming the file and problem)."""
    obj = _read_json(path)
    _index_ground_truth(obj, str(path))
    return obj


def load_results(path: str | Path | Sequence[Mapping], gt: Mapping | GroundTruth | str | Path) -> list:
    """Read and validate COCO results (a JSON list) against the ground truth ``gt``."""
    truth = index_ground_truth(gt)
    if isinstance(path, (str, Path)):
        obj = _read_json(path)
        _index_results(obj, truth, str(path))
    else:
        obj = list(path)
        _index_results(obj, truth, IN_MEMORY_RESULTS)
    return obj


def results_meta_path(results_path: str | Path) -> Path:
    """``<name>.meta.json`` beside ``<name>.json``."""
    path = Path(results_path)
    return path.with_name(path.stem + ".meta.json") if path.suffix == ".json" else path.with_name(path.name + ".meta.json")


def results_meta(results_path: str | Path) -> dict:
    """The sidecar metadata of a results file ({} when there is none)."""
    meta_path = results_meta_path(results_path)
    if not meta_path.is_file():
        return {}
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise _error(meta_path, "results metadata must be a JSON object, for example {\"score_source\": \"maskrcnn_score\"}")
    return meta


def write_results(path: str | Path, results: list, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a results list and, when given, its sidecar ``<name>.meta.json`` (both atomic)."""
    if meta is not None:
        write_json(results_meta_path(path), dict(meta))
    return write_json(path, results)


def image_id_by_name(gt: Mapping | str | Path) -> dict[str, int]:
    """file_name (stem) -> image id of a COCO ground truth."""
    obj = _read_json(gt) if isinstance(gt, (str, Path)) else gt
    return {image["file_name"]: int(image["id"]) for image in obj["images"]}
