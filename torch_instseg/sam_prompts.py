"""Prompts for SAM fine-tuning, drawn as SAM's interactive training draws them (numpy).

Boxes jittered as a detector's are, points inside an instance and inside its box outside it,
correction points from the error region of the previous mask, and detector-like mask prompts.
The low-res grid is a quarter of SAM's input side (``LOWRES_STRIDE``).
"""
from __future__ import annotations

import numpy as np

BOX_NOISE_FRACTION = 0.1
BOX_NOISE_MAX_PX_AT_1024 = 20.0
LOWRES_STRIDE = 4
PAD_LABEL = -1


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator, frame: tuple[int, int],
                 fraction: float = BOX_NOISE_FRACTION, max_shift: float = 20.0) -> np.ndarray:
    """N x 4 xyxy boxes with each coordinate moved by N(0, (fraction x box side)^2), cut at +-max_shift.

    frame: (height, width) the boxes must stay inside. A box that would collapse keeps its
    original coordinates. Returns N x 4 float32.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sides = np.stack([widths, heights, widths, heights], axis=1)
    noise = np.clip(rng.normal(size=boxes.shape) * fraction * sides, -max_shift, max_shift)
    jittered = boxes + noise
    jittered[:, [0, 2]] = np.clip(jittered[:, [0, 2]], 0, frame[1])
    jittered[:, [1, 3]] = np.clip(jittered[:, [1, 3]], 0, frame[0])
    collapsed = (jittered[:, 2] <= jittered[:, 0]) | (jittered[:, 3] <= jittered[:, 1])
    jittered[collapsed] = boxes[collapsed]
    return jittered.astype(np.float32)


def _pick(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` (row, col) pixels of a 2-D bool mask drawn uniformly with replacement; fewer when empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0 or count == 0:
        return np.zeros((0, 2), np.int64)
    chosen = rng.integers(0, rows.size, size=count)
    return np.stack([rows[chosen], cols[chosen]], axis=1)


def sample_points(masks: np.ndarray, boxes: np.ndarray, n_positive: int, n_negative: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positive points inside each mask and negative points inside its box but outside it.

    masks: N x h x w bool on the grid the points are drawn on; boxes: N x 4 xyxy in pixel-edge
    coordinates of that grid. Returns (N x P x 2 (row, col) int64, N x P labels: 1 positive,
    0 negative, -1 padding where a mask or its surround is empty), P = n_positive + n_negative.
    """
    masks = np.asarray(masks, bool)
    total = n_positive + n_negative
    pixels = np.zeros((len(masks), total, 2), np.int64)
    labels = np.full((len(masks), total), PAD_LABEL, np.int64)
    for k, mask in enumerate(masks):
        x0, y0, x1, y1 = boxes[k]
        inside_box = np.zeros_like(mask)
        inside_box[max(int(np.floor(y0)), 0):int(np.ceil(y1)), max(int(np.floor(x0)), 0):int(np.ceil(x1))] = True
        positive = _pick(mask, n_positive, rng)
        negative = _pick(inside_box & ~mask, n_negative, rng)
        pixels[k, :len(positive)] = positive
        labels[k, :len(positive)] = 1
        pixels[k, n_positive:n_positive + len(negative)] = negative
        labels[k, n_positive:n_positive + len(negative)] = 0
    return pixels, labels


def correction_points(predicted: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One point per prompt from the error region of its previous mask (SAM's interactive training).

    predicted, target: N x h x w bool. Positive (1) in the missed part when it is at least as
    large as the extra part, negative (0) in the extra part otherwise; padding (-1) when the
    mask is exact. Returns (N x 2 (row, col) int64, N labels).
    """
    predicted = np.asarray(predicted, bool)
    target = np.asarray(target, bool)
    pixels = np.zeros((len(target), 2), np.int64)
    labels = np.full(len(target), PAD_LABEL, np.int64)
    for k in range(len(target)):
        missed = target[k] & ~predicted[k]
        extra = predicted[k] & ~target[k]
        n_missed, n_extra = int(missed.sum()), int(extra.sum())
        if n_missed == 0 and n_extra == 0:
            continue
        positive = n_missed >= n_extra
        pixels[k] = _pick(missed if positive else extra, 1, rng)[0]
        labels[k] = 1 if positive else 0
    return pixels, labels


def grid_to_input(pixels: np.ndarray, stride: int = LOWRES_STRIDE) -> np.ndarray:
    """(row, col) cells of the low-res grid -> (x, y) SAM input coordinates of the cell centres (... x 2 float32)."""
    pixels = np.asarray(pixels, np.float64)
    centre = (stride - 1) / 2.0
    return np.stack([pixels[..., 1] * stride + centre, pixels[..., 0] * stride + centre], axis=-1).astype(np.float32)


def detector_like_masks(targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N x 1 x g x g mask-prompt logits made from N x g x g bool instances, as a detector's masks look.

    Each instance is grown or shrunk by one grid cell (each with probability 0.2; a shrink
    that would empty it is skipped), blurred with a Gaussian of sigma 0.3-1.0 cells, and
    turned into logits as ``sam.mask_prompts`` turns the Mask R-CNN mask probabilities into
    SAM's mask input (``sam.probs_to_logits``).
    """
    from scipy import ndimage

    from .sam import probs_to_logits

    targets = np.asarray(targets, bool)
    logits = np.zeros((len(targets), 1) + targets.shape[1:], np.float32)
    for k, mask in enumerate(targets):
        change = rng.random()
        if change < 0.2:
            mask = ndimage.binary_dilation(mask)
        elif change < 0.4 and ndimage.binary_erosion(mask).any():
            mask = ndimage.binary_erosion(mask)
        logits[k, 0] = probs_to_logits(ndimage.gaussian_filter(mask.astype(np.float32), sigma=float(rng.uniform(0.3, 1.0))))
    return logits
