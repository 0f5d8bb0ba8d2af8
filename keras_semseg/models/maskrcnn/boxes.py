"""Box arithmetic in TensorFlow ops.

Boxes are ``(y1, x1, y2, x2)`` in continuous pixel coordinates: pixel row ``i`` covers
``[i, i + 1)``, so a box around rows ``r0..r1`` is ``[r0, r1 + 1)`` and its height is
``y2 - y1``. Deltas are ``(dy, dx, dh, dw)`` as in Faster R-CNN, divided by ``1 / weights``
(torchvision's convention: RPN weights (1, 1, 1, 1), box head (10, 10, 5, 5)).
"""
from __future__ import annotations

import math

from ...tf_env import tensorflow

tf = tensorflow()

DELTA_CLIP = math.log(1000.0 / 16)


def encode(boxes: tf.Tensor, references: tf.Tensor, weights=(1.0, 1.0, 1.0, 1.0)) -> tf.Tensor:
    """Deltas ... x 4 that turn ``references`` (... x 4) into ``boxes`` (... x 4)."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    references = tf.convert_to_tensor(references, tf.float32)
    ref_h = references[..., 2] - references[..., 0]
    ref_w = references[..., 3] - references[..., 1]
    ref_cy = references[..., 0] + 0.5 * ref_h
    ref_cx = references[..., 1] + 0.5 * ref_w
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    cy = boxes[..., 0] + 0.5 * h
    cx = boxes[..., 1] + 0.5 * w
    ref_h = tf.maximum(ref_h, 1e-6)
    ref_w = tf.maximum(ref_w, 1e-6)
    deltas = tf.stack([
        weights[0] * (cy - ref_cy) / ref_h,
        weights[1] * (cx - ref_cx) / ref_w,
        weights[2] * tf.math.log(tf.maximum(h, 1e-6) / ref_h),
        weights[3] * tf.math.log(tf.maximum(w, 1e-6) / ref_w),
    ], axis=-1)
    return deltas


def decode(deltas: tf.Tensor, references: tf.Tensor, weights=(1.0, 1.0, 1.0, 1.0)) -> tf.Tensor:
    """Boxes ... x 4 from ``deltas`` applied to ``references``; dh, dw clipped at log(1000/16)."""
    deltas = tf.convert_to_tensor(deltas, tf.float32)
    references = tf.convert_to_tensor(references, tf.float32)
    ref_h = references[..., 2] - references[..., 0]
    ref_w = references[..., 3] - references[..., 1]
    ref_cy = references[..., 0] + 0.5 * ref_h
    ref_cx = references[..., 1] + 0.5 * ref_w
    dy = deltas[..., 0] / weights[0]
    dx = deltas[..., 1] / weights[1]
    dh = tf.minimum(deltas[..., 2] / weights[2], DELTA_CLIP)
    dw = tf.minimum(deltas[..., 3] / weights[3], DELTA_CLIP)
    cy = ref_cy + dy * ref_h
    cx = ref_cx + dx * ref_w
    h = ref_h * tf.exp(dh)
    w = ref_w * tf.exp(dw)
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip(boxes: tf.Tensor, height, width) -> tf.Tensor:
    """Boxes ... x 4 clipped to the image ``[0, height] x [0, width]``."""
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    y1 = tf.clip_by_value(boxes[..., 0], 0.0, height)
    x1 = tf.clip_by_value(boxes[..., 1], 0.0, width)
    y2 = tf.clip_by_value(boxes[..., 2], 0.0, height)
    x2 = tf.clip_by_value(boxes[..., 3], 0.0, width)
    return tf.stack([y1, x1, y2, x2], axis=-1)


def area(boxes: tf.Tensor) -> tf.Tensor:
    """Areas ``...`` of boxes ... x 4 (0 for empty boxes)."""
    return tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)


def iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """Pairwise IoU: ``[B x] N x 4`` and ``[B x] M x 4`` -> ``[B x] N x M`` (0 where a union is empty)."""
    a = tf.convert_to_tensor(boxes_a, tf.float32)[..., :, None, :]
    b = tf.convert_to_tensor(boxes_b, tf.float32)[..., None, :, :]
    top = tf.maximum(a[..., 0], b[..., 0])
    left = tf.maximum(a[..., 1], b[..., 1])
    bottom = tf.minimum(a[..., 2], b[..., 2])
    right = tf.minimum(a[..., 3], b[..., 3])
    intersection = tf.maximum(bottom - top, 0.0) * tf.maximum(right - left, 0.0)
    union = area(a) + area(b) - intersection
    return tf.math.divide_no_nan(intersection, union)

