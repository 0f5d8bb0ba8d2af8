"""The COCO codec: RLE masks (encode, decode, area, bbox), polygons, label images <-> COCO objects; numpy only.

One codec for the reader (``data.readers.coco``), the converter (``torch_instseg.coco``,
``python -m data``) and the evaluator (``torch_instseg.evaluate``), as pycocotools' ``mask``
module serves its callers. RLE is COCO's run-length encoding of a binary H x W mask read in
column-major (Fortran) order, runs alternating background / foreground and starting with
background (a first count of 0 when pixel (0, 0) is foreground). ``counts`` is either the
compressed string of ``pycocotools.mask.encode`` (reproduced here byte for byte) or an
uncompressed list of ints. Polygons are rasterised by pycocotools (imported when needed),
exactly as COCOeval does. Bad input raises ``DatasetError``.

Ground truth (``dataset_to_coco``): images with ``id`` 1..N in dataset order,
``file_name`` = the file stem, ``height``, ``width``; one annotation per labelled cell
(``category_id`` 1, RLE ``segmentation``, ``area`` in pixels, ``bbox`` [x, y, w, h],
``iscrowd`` 0); categories ``[{"id": 1, "name": "cell"}]``. Results
(``instances_to_results``): ``image_id``, ``category_id``, RLE ``segmentation``,
``score``, ``bbox`` [x, y, w, h], plus any per-detection extras.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import DatasetError
from .outputs import write_json
from .sample import Sample

CELL_CATEGORY = {"id": 1, "name": "cell"}


def is_mapping(value: Any) -> bool:
    return type(value) is dict or isinstance(value, Mapping)


def is_int(value: Any) -> bool:
    if type(value) is int:
        return True
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    if type(value) is float or type(value) is int:
        return True
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


# ---------------------------------------------------------------- RLE

def _counts_from_indices(indices: np.ndarray, n_pixels: int) -> np.ndarray:
    """Run lengths (background first) of the sorted flat foreground ``indices`` in ``n_pixels``."""
    if indices.size == 0:
        return np.array([n_pixels], dtype=np.int64)
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    run_starts = indices[np.r_[0, breaks]].astype(np.int64)
    run_ends = indices[np.r_[breaks - 1, indices.size - 1]].astype(np.int64) + 1
    counts = np.empty(2 * run_starts.size + 1, dtype=np.int64)
    counts[0] = run_starts[0]
    counts[2:-1:2] = run_starts[1:] - run_ends[:-1]
    counts[1::2] = run_ends - run_starts
    counts[-1] = n_pixels - run_ends[-1]
    return counts if counts[-1] > 0 else counts[:-1]


def mask_to_counts(mask: np.ndarray) -> np.ndarray:
    """Uncompressed RLE counts (int64) of an H x W binary mask, column-major, background first."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DatasetError(f"a mask must be H x W, got shape {mask.shape}")
    flat = mask.ravel(order="F").astype(bool, copy=False)
    return _counts_from_indices(np.flatnonzero(flat), flat.size)


def counts_to_string(counts: Sequence[int] | np.ndarray) -> str:
    """COCO's compressed counts string (LEB128-like, 6 bits a char, chars 48..111, deltas from i > 2)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 0:
        return ""
    values = counts.copy()
    values[3:] -= counts[1:-2]
    rounds = []
    active = np.ones(values.size, dtype=bool)
    while active.any():
        low = values & 0x1F
        values = values >> 5
        more = np.where(low & 0x10, values != -1, values != 0)
        chars = low + 48 + np.where(more, 0x20, 0)
        rounds.append(np.where(active, chars, 0))
        active &= more
    table = np.stack(rounds, axis=1).ravel()
    return table[table > 0].astype(np.uint8).tobytes().decode("ascii")


class BadCountsString(DatasetError):
    """A malformed compressed counts string: ``index`` in the batch and the ``problem``."""

    def __init__(self, index: int, problem: str) -> None:
        self.index, self.problem = index, problem
        super().__init__(problem)


def strings_to_counts(texts: Sequence[str | bytes]) -> list[np.ndarray]:
    """Counts (int64) of many compressed strings at once (one vectorised pass)."""
    raws = [t.encode("ascii", errors="replace") if isinstance(t, str) else bytes(t) for t in texts]
    lengths = np.array([len(r) for r in raws], dtype=np.int64)
    codes = np.frombuffer(b"".join(raws), dtype=np.uint8).astype(np.int64) - 48
    text_end = np.cumsum(lengths)
    if codes.size == 0:
        return [np.zeros(0, dtype=np.int64) for _ in raws]

    def text_of(char_position: int) -> int:
        return int(np.searchsorted(text_end, char_position, side="right"))

    bad = np.flatnonzero((codes < 0) | (codes > 63))
    if bad.size:
        raise BadCountsString(text_of(bad[0]), "RLE counts string has characters outside '0'..'o'")
    more = (codes & 0x20) != 0
    truncated = np.flatnonzero(more[text_end[lengths > 0] - 1])
    if truncated.size:
        raise BadCountsString(int(np.flatnonzero(lengths > 0)[truncated[0]]), "RLE counts string is truncated")
    ends = np.flatnonzero(~more)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    n_chars = ends - starts + 1
    position = np.arange(codes.size) - np.repeat(starts, n_chars)
    if position.max() > 11:
        raise BadCountsString(text_of(int(np.argmax(position))), "RLE counts string has a number too large")
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * n_chars[negative])
    numbers_before_end = np.searchsorted(ends, text_end, side="left")
    first_number = np.r_[0, numbers_before_end[:-1]]
    n_numbers = numbers_before_end - first_number
    text = np.repeat(np.arange(len(raws)), n_numbers)
    k = np.arange(values.size) - first_number[text]
    odd = (k % 2) == 1
    even_from_two = ((k % 2) == 0) & (k >= 2)
    odd_sum = np.r_[0, np.cumsum(np.where(odd, values, 0))]
    even_sum = np.r_[0, np.cumsum(np.where(even_from_two, values, 0))]
    counts = np.where(odd, odd_sum[1:] - odd_sum[first_number][text],
                      np.where(even_from_two, even_sum[1:] - even_sum[first_number][text], values))
    return np.split(counts, numbers_before_end[:-1])


def string_to_counts(text: str | bytes) -> np.ndarray:
    """Counts (int64) from COCO's compressed string; ``DatasetError`` if it is malformed."""
    try:
        return strings_to_counts([text])[0]
    except BadCountsString as exc:
        raise DatasetError(exc.problem) from None


def rle_size(rle: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) of an RLE dict; ``DatasetError`` unless 'size' is two non-negative ints."""
    size = rle.get("size") if is_mapping(rle) else None
    if type(size) is list and len(size) == 2 and type(size[0]) is int and type(size[1]) is int and size[0] >= 0 and size[1] >= 0:
        return size[0], size[1]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(is_int(v) and v >= 0 for v in size):
        raise DatasetError("RLE needs 'size': [height, width] (two non-negative ints)")
    return int(size[0]), int(size[1])


def raw_counts(rle: Mapping[str, Any]) -> bytes | np.ndarray:
    """The compressed string (as bytes) or the list counts (int64 array) of an RLE, not yet checked against its size."""
    counts = rle.get("counts")
    if isinstance(counts, str):
        return counts.encode("ascii", errors="replace")
    if isinstance(counts, bytes):
        return counts
    if isinstance(counts, (list, tuple, np.ndarray)):
        values = np.asarray(counts)
        if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
            raise DatasetError("RLE 'counts' list must hold integers")
        return values.astype(np.int64)
    raise DatasetError("RLE needs 'counts' (a compressed string or a list of ints)")


def check_counts(values: np.ndarray, height: int, width: int) -> None:
    """``DatasetError`` unless the run lengths are non-negative and cover height x width pixels."""
    if values.size and values.min() < 0:
        raise DatasetError("RLE counts are negative (corrupt string)")
    total = int(values.sum())
    if total != height * width:
        raise DatasetError(f"RLE counts cover {total} pixels, but size {height}x{width} has {height * width}")


def rle_to_counts(rle: Mapping[str, Any]) -> np.ndarray:
    """Checked uncompressed counts (int64) of an RLE dict with compressed or list ``counts``."""
    height, width = rle_size(rle)
    raw = raw_counts(rle)
    values = string_to_counts(raw) if isinstance(raw, bytes) else raw
    check_counts(values, height, width)
    return values


def encode_rle(mask: np.ndarray) -> dict:
    """H x W bool mask -> ``{"size": [h, w], "counts": str}``, identical to ``pycocotools.mask.encode``."""
    mask = np.asarray(mask)
    counts = mask_to_counts(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts_to_string(counts)}


def counts_to_mask(counts: np.ndarray, height: int, width: int) -> np.ndarray:
    """H x W bool mask from uncompressed counts (column-major, background first)."""
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """RLE dict (compressed str/bytes or list ``counts``) -> H x W bool mask."""
    height, width = rle_size(rle)
    return counts_to_mask(rle_to_counts(rle), height, width)


def counts_to_pixels(counts_list: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Foreground pixels of many masks at once: (flat column-major indices, index of the mask), int64."""
    if not counts_list:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    lengths = np.array([len(c) for c in counts_list], dtype=np.int64)
    counts = np.concatenate([np.asarray(c, dtype=np.int64) for c in counts_list])
    first = np.cumsum(lengths) - lengths
    mask_of_count = np.repeat(np.arange(lengths.size), lengths)
    position = np.arange(counts.size) - first[mask_of_count]
    ends = np.cumsum(counts)
    run_start = ends - counts - np.r_[0, ends][first][mask_of_count]
    foreground = (position % 2) == 1
    run_start, run_length, owner = run_start[foreground], counts[foreground], mask_of_count[foreground]
    before = np.cumsum(run_length) - run_length
    pixels = np.repeat(run_start - before, run_length) + np.arange(int(run_length.sum()), dtype=np.int64)
    return pixels, np.repeat(owner, run_length)


def rle_area(rle: Mapping[str, Any]) -> int:
    """Foreground pixel count of an RLE."""
    return int(rle_to_counts(rle)[1::2].sum())


def counts_to_bbox(counts: np.ndarray, height: int) -> list[float]:
    """[x, y, w, h] in pixels of the foreground (as ``pycocotools.mask.toBbox``); zeros when empty."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = counts[1::2]
    starts = (np.cumsum(counts) - counts)[1::2]
    keep = lengths > 0
    if not keep.any() or height == 0:
        return [0.0, 0.0, 0.0, 0.0]
    first, last = starts[keep], starts[keep] + lengths[keep] - 1
    x_first, y_first = np.divmod(first, height)
    x_last, y_last = np.divmod(last, height)
    spans_columns = (x_last > x_first).any()
    y_min = 0 if spans_columns else int(min(y_first.min(), y_last.min()))
    y_max = height - 1 if spans_columns else int(max(y_first.max(), y_last.max()))
    x_min, x_max = int(x_first.min()), int(x_last.max())
    return [float(x_min), float(y_min), float(x_max - x_min + 1), float(y_max - y_min + 1)]


def rle_to_bbox(rle: Mapping[str, Any]) -> list[float]:
    """[x, y, w, h] of an RLE's foreground, as ``pycocotools.mask.toBbox``."""
    height, _ = rle_size(rle)
    return counts_to_bbox(rle_to_counts(rle), height)


# ---------------------------------------------------------------- building COCO objects

def labels_to_annotations(labels: np.ndarray, image_id: int, start_id: int = 1) -> list[dict]:
    """One COCO annotation per instance of an H x W int label image (0 = background).

    Instances in increasing label order get ids ``start_id``, ``start_id + 1``, ...
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"labels must be an H x W integer image, got {labels.dtype} {labels.shape}")
    height, width = labels.shape
    flat = labels.ravel(order="F")
    foreground = np.flatnonzero(flat > 0)
    values = flat[foreground]
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    sorted_indices = foreground[order]
    ids, first = np.unique(sorted_values, return_index=True)
    bounds = np.r_[first, sorted_values.size]
    annotations = []
    for k in range(ids.size):
        counts = _counts_from_indices(sorted_indices[bounds[k]:bounds[k + 1]], flat.size)
        annotations.append({
            "id": int(start_id + k),
            "image_id": int(image_id),
            "category_id": CELL_CATEGORY["id"],
            "segmentation": {"size": [height, width], "counts": counts_to_string(counts)},
            "area": int(counts[1::2].sum()),
            "bbox": counts_to_bbox(counts, height),
            "iscrowd": 0,
        })
    return annotations


def dataset_to_coco(samples: Iterable[Sample]) -> dict:
    """Ground-truth COCO dict of samples (images ids 1..N in order, file_name = stem)."""
    images, annotations = [], []
    for image_id, sample in enumerate(samples, start=1):
        height, width = sample.labels.shape[:2]
        images.append({"id": image_id, "file_name": sample.name, "height": int(height), "width": int(width)})
        annotations.extend(labels_to_annotations(sample.labels, image_id, start_id=len(annotations) + 1))
    return {"images": images, "annotations": annotations, "categories": [dict(CELL_CATEGORY)]}


def instances_to_results(
    image_id: int,
    masks: np.ndarray,
    scores: np.ndarray,
    boxes: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> list[dict]:
    """COCO results for one image.

    masks: N x H x W bool; scores: N; boxes: N x 4 [x1, y1, x2, y2] pixels (the bbox is
    taken from the mask when None); extra: name -> N values stored per detection.
    """
    masks = np.asarray(masks)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if masks.ndim != 3:
        raise DatasetError(f"masks must be N x H x W, got shape {masks.shape}")
    n = masks.shape[0]
    if scores.size != n:
        raise DatasetError(f"{n} masks but {scores.size} scores")
    if not np.isfinite(scores).all():
        raise DatasetError("scores must be finite numbers")
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.shape != (n, 4):
            raise DatasetError(f"boxes must be N x 4 (x1, y1, x2, y2) with N = {n}, got shape {boxes.shape}")
    extras = {}
    for name, values in (extra or {}).items():
        values = np.asarray(values).reshape(-1)
        if values.size != n:
            raise DatasetError(f"extra field '{name}' has {values.size} values for {n} detections")
        extras[name] = values.tolist()
    height = masks.shape[1]
    results = []
    for k in range(n):
        counts = mask_to_counts(masks[k])
        if boxes is None:
            bbox = counts_to_bbox(counts, height)
        else:
            x1, y1, x2, y2 = (float(v) for v in boxes[k])
            bbox = [x1, y1, x2 - x1, y2 - y1]
        detection = {
            "image_id": int(image_id),
            "category_id": CELL_CATEGORY["id"],
            "segmentation": {"size": [int(masks.shape[1]), int(masks.shape[2])], "counts": counts_to_string(counts)},
            "score": float(scores[k]),
            "bbox": bbox,
        }
        for name, values in extras.items():
            detection[name] = values[k]
        results.append(detection)
    return results


def polygons_to_counts(polygons: Sequence[Sequence[float]], height: int, width: int) -> bytes:
    """Compressed counts (bytes) of the union of polygons ``[[x1, y1, x2, y2, ...], ...]`` (3+ points each),
    rasterised as COCOeval does (pycocotools ``frPyObjects`` + ``merge``)."""
    if not polygons or not all(isinstance(p, (list, tuple)) and len(p) >= 6 and len(p) % 2 == 0 and all(is_number(v) for v in p)
                               for p in polygons):
        raise DatasetError("polygon segmentation must be a list of [x1, y1, x2, y2, ...] lists (3+ points)")
    from pycocotools import mask as mask_utils

    rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width))
    return bytes(rle["counts"])


def write_coco(path: str | Path, obj: Any) -> Path:
    """Write a COCO dict or results list atomically."""
    return write_json(path, obj)


