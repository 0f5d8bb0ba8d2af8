"""Anchors of the FPN levels P2-P6.

An anchor of size ``s`` and aspect ratio ``r`` (height / width) has height ``s * sqrt(r)``
and width ``s / sqrt(r)`` (area ``s**2``), centred on the centre of its feature-map cell:
``((j + 0.5) * stride, (i + 0.5) * stride)`` in pixel coordinates. Order: level, then
feature-map row, column, then ratio, which is the order of the RPN head's flattened output.
"""
from __future__ import annotations

import math
from typing import Sequence

from ...tf_env import tensorflow

STRIDES = (4, 8, 16, 32, 64)
RATIOS = (0.5, 1.0, 2.0)
REFERENCE_SIZES = (32, 64, 128, 256, 512)
REFERENCE_IMAGE = 1024


def default_anchor_sizes(height: int, width: int) -> tuple[float, ...]:
    """Anchor size per level: (32, 64, 128, 256, 512) at 1024 px, scaled with the image's
    longer side, but never below twice the level's stride (16, 32, ... px).

    128 px -> (8, 16, 32, 64, 128); 256 -> (8, 16, 32, 64, 128); 512 -> (16, 32, ..., 256).
    """
    scale = max(height, width) / REFERENCE_IMAGE
    return tuple(float(max(size * scale, 2 * stride)) for size, stride in zip(REFERENCE_SIZES, STRIDES))


def level_anchors(height, width, stride: int, size: float, ratios: Sequence[float] = RATIOS):
    """Anchors (height * width * len(ratios)) x 4 of one level with a ``height x width`` feature map."""
    tf = tensorflow()

    heights = tf.constant([size * math.sqrt(r) for r in ratios], tf.float32)
    widths = tf.constant([size / math.sqrt(r) for r in ratios], tf.float32)
    cy = (tf.cast(tf.range(height), tf.float32) + 0.5) * stride
    cx = (tf.cast(tf.range(width), tf.float32) + 0.5) * stride
    cy, cx = tf.meshgrid(cy, cx, indexing="ij")
    cy = cy[:, :, None]
    cx = cx[:, :, None]
    anchors = tf.stack([cy - 0.5 * heights, cx - 0.5 * widths, cy + 0.5 * heights, cx + 0.5 * widths], axis=-1)
    return tf.reshape(anchors, (-1, 4))


def pyramid_anchors(shapes, sizes: Sequence[float], strides: Sequence[int] = STRIDES, ratios: Sequence[float] = RATIOS):
    """All anchors N x 4 for feature maps of ``shapes`` [(h, w) per level]."""
    tf = tensorflow()

    return tf.concat([level_anchors(h, w, stride, size, ratios) for (h, w), stride, size in zip(shapes, strides, sizes)], axis=0)
