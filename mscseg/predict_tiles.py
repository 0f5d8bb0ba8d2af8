"""Tiles for ``mscseg.predict``: where tiles start, their blend weights, the semantic map cross-faded from
tiles, Mask R-CNN instances merged across tiles by ownership, resizing and relabelling (module docstring of
``mscseg.predict``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from .predict import LoadedModel


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start positions of tiles of ``tile`` pixels covering ``length`` with at least ``overlap`` pixels shared."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def owner_index(length: int, starts: Sequence[int], tile: int) -> np.ndarray:
    """For each position 0..length-1, the index of the tile whose centre is nearest (ties to the first)."""
    centres = np.asarray(starts, np.float64) + min(tile, length) / 2.0
    positions = np.arange(length)[:, None] + 0.5
    return np.argmin(np.abs(positions - centres[None, :]), axis=1)


def axis_weights(length: int, starts: Sequence[int], tile: int, ramp: int) -> list[np.ndarray]:
    """Per tile along one axis, ``tile`` blend weights that are 0 at the tile's inner edges (edges inside the image).

    A weight rises linearly from 0 at an inner edge to 1 at ``ramp`` pixels from it;
    edges on the image border keep weight 1, so the first and last row and column
    count fully. Where every tile covering a position is at an inner edge (tiles that
    meet without overlap), those tiles share it equally: every position has weight.
    """
    position = np.arange(tile, dtype=np.float64)
    weights = []
    for start in starts:
        distance = np.full(tile, np.inf)
        if start > 0:
            distance = np.minimum(distance, position)
        if start + tile < length:
            distance = np.minimum(distance, tile - 1 - position)
        weights.append(np.clip(distance / max(1, ramp), 0.0, 1.0))
    total = np.zeros(max(length, tile))
    for start, weight in zip(starts, weights):
        total[start:start + tile] += weight
    for start, weight in zip(starts, weights):
        weight[total[start:start + tile] == 0] = 1.0
    return weights


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (int(value), int(value)) if np.isscalar(value) else (int(value[0]), int(value[1]))


def _padded(image: np.ndarray, tile_h: int, tile_w: int | None = None) -> np.ndarray:
    tile_w = tile_h if tile_w is None else tile_w
    height, width = image.shape[:2]
    pad = ((0, max(0, tile_h - height)), (0, max(0, tile_w - width))) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad, mode="symmetric") if any(p[1] for p in pad[:2]) else image


def semantic_probabilities(loaded: LoadedModel, image: np.ndarray, tile: int | tuple[int, int], overlap: int | tuple[int, int],
                           batch_size: int = 32) -> np.ndarray:
    """H x W float32 probabilities of an H x W x 3 image from tiles of ``tile`` (h, w) pixels overlapping by ``overlap``.

    Each tile is resized to the model's input (as training resized whole images) and
    its map back; tiles are cross-faded with ``axis_weights`` (weight 0 at inner tile
    edges, where the model sees padding), so the seams vanish. An image smaller than a
    tile is padded (mirrored) and cropped back.
    """
    from keras_semseg.predict import predict_probs

    (tile_h, tile_w), (overlap_h, overlap_w) = _pair(tile), _pair(overlap)
    height, width = image.shape[:2]
    ys, xs = tile_starts(height, tile_h, overlap_h), tile_starts(width, tile_w, overlap_w)
    padded = _padded(image, tile_h, tile_w)
    pieces = [padded[y0:y0 + tile_h, x0:x0 + tile_w] for y0 in ys for x0 in xs]
    probabilities = iter(predict_probs(loaded.model, pieces, loaded.input_size, batch_size=batch_size))
    weights_y, weights_x = axis_weights(height, ys, tile_h, overlap_h), axis_weights(width, xs, tile_w, overlap_w)
    total = np.zeros((max(height, tile_h), max(width, tile_w)), np.float64)
    weight_sum = np.zeros_like(total)
    for y0, weight_y in zip(ys, weights_y):
        for x0, weight_x in zip(xs, weights_x):
            weights = np.outer(weight_y, weight_x)
            total[y0:y0 + tile_h, x0:x0 + tile_w] += next(probabilities) * weights
            weight_sum[y0:y0 + tile_h, x0:x0 + tile_w] += weights
    return (total / weight_sum)[:height, :width].astype(np.float32)


INSTANCE_TILE = 512


def _native_size(model, height: int, width: int) -> None:
    """Make torchvision's internal resize a no-op for an H x W input (run the network at the tile's own pixels)."""
    model.mscseg_image_size = None
    model.transform.min_size = (min(height, width),)
    model.transform.max_size = max(height, width)


def instance_labels(
    loaded: LoadedModel, image: np.ndarray, tile: int, overlap: int, threshold: float, device: str | None = None
) -> tuple[np.ndarray, dict[int, float]]:
    """H x W int32 labels of Mask R-CNN instances merged across tiles, and each label's score."""
    from torch_instseg.maskrcnn import predict_instances

    height, width = image.shape[:2]
    tile_h, tile_w = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    owner_y, owner_x = owner_index(height, ys, tile_h), owner_index(width, xs, tile_w)
    kept: list[tuple[float, int, int, np.ndarray]] = []
    for y0 in ys:
        for x0 in xs:
            piece = image[y0:y0 + tile_h, x0:x0 + tile_w]
            if loaded.model is not None and hasattr(loaded.model, "transform"):
                _native_size(loaded.model, tile_h, tile_w)
            result = predict_instances(loaded.model, [piece], score_threshold=threshold, device=device, image_size=None)[0]
            for mask, score in zip(result["masks"], result["scores"]):
                if not mask.any():
                    continue
                rows, cols = np.nonzero(mask)
                cy, cx = int(rows.mean()) + y0, int(cols.mean()) + x0
                if ys[owner_y[cy]] == y0 and xs[owner_x[cx]] == x0:
                    kept.append((float(score), y0, x0, mask))
    labels = np.zeros((height, width), np.int32)
    scores: dict[int, float] = {}
    for label, (score, y0, x0, mask) in enumerate(sorted(kept, key=lambda k: k[0]), start=1):
        region = labels[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
        region[mask] = label
        scores[label] = score
    return relabel(labels, scores)


def peer_labels(loaded: LoadedModel, image: np.ndarray, threshold: float = 0.0) -> tuple[np.ndarray, dict[int, float]]:
    """H x W int32 labels of a whole H x W x 3 image by a peer (``peers.<name>.predict_labels``) and each label's score;
    cells scoring below ``threshold`` dropped."""
    import peers

    labels, scores = peers.peer_module(loaded.name).predict_labels(loaded.model, image)
    labels = np.asarray(labels).astype(np.int32)
    scores = np.asarray(scores, np.float64).reshape(-1)
    kept = {k: float(scores[k - 1]) for k in range(1, scores.size + 1) if scores[k - 1] >= threshold}
    labels[~np.isin(labels, np.fromiter(kept, np.int64, len(kept)))] = 0
    return relabel(labels, kept)


def resize_image(image: np.ndarray, scale: float | tuple[float, float]) -> np.ndarray:
    """H x W x 3 image resized by ``scale`` (one factor, or (y, x)); bilinear, antialiased when shrinking."""
    from skimage.transform import resize

    scale_y, scale_x = (scale, scale) if np.isscalar(scale) else scale
    height, width = image.shape[:2]
    shape = (max(1, int(round(height * scale_y))), max(1, int(round(width * scale_x))))
    return resize(image, shape + image.shape[2:], order=1, anti_aliasing=min(scale_y, scale_x) < 1,
                  preserve_range=True).astype(np.float32)


def resize_back(array: np.ndarray, shape: tuple[int, int], labels: bool) -> np.ndarray:
    """A probability map (bilinear) or label image (nearest) resized to ``shape``."""
    from skimage.transform import resize

    if array.shape[:2] == tuple(shape):
        return array
    if labels:
        return resize(array, shape, order=0, anti_aliasing=False, preserve_range=True).astype(array.dtype)
    return resize(array, shape, order=1, anti_aliasing=False, preserve_range=True).astype(np.float32)


def relabel(labels: np.ndarray, scores: dict[int, float] | None = None) -> tuple[np.ndarray, dict[int, float]]:
    """Labels renumbered 1..N in order of appearance value (empty labels dropped), scores carried along."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lookup = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1)
    new_scores = {int(lookup[i]): scores[int(i)] for i in ids} if scores else {}
    return lookup[labels], new_scores
