"""ROIAlign with ``tf.image.crop_and_resize`` (no custom op, no XLA).

Same values as torchvision's ``roi_align(..., aligned=True)`` with a fixed sampling ratio:
each output bin averages ``sampling_ratio**2`` bilinear samples at the bin's sub-cell
centres; a sample less than one feature cell outside the map takes the edge value, one
further out counts as 0. Boxes are pixel ``(y1, x1, y2, x2)`` of the input image; feature
cell ``j`` of a map with stride ``s`` is centred at pixel ``(j + 0.5) * s``.
"""
from __future__ import annotations

from ...tf_env import tensorflow

tf = tensorflow()


def roi_align(features: tf.Tensor, boxes: tf.Tensor, box_indices: tf.Tensor, stride: float,
              output_size: tuple[int, int], sampling_ratio: int = 2) -> tf.Tensor:
    """Pool R boxes (R x 4, image pixels) from ``features`` B x h x w x C -> R x ph x pw x C.

    ``box_indices`` (R, int32) says which image of the batch each box is on.
    """
    out_h, out_w = output_size
    padded = tf.pad(features, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    padded_h = tf.cast(tf.shape(padded)[1], tf.float32)
    padded_w = tf.cast(tf.shape(padded)[2], tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    start_y = boxes[:, 0] / stride - 0.5
    start_x = boxes[:, 1] / stride - 0.5
    step_y = (boxes[:, 2] - boxes[:, 0]) / stride / (out_h * sampling_ratio)
    step_x = (boxes[:, 3] - boxes[:, 1]) / stride / (out_w * sampling_ratio)
    first_y = start_y + 0.5 * step_y + 1.0
    first_x = start_x + 0.5 * step_x + 1.0
    last_y = first_y + (out_h * sampling_ratio - 1) * step_y
    last_x = first_x + (out_w * sampling_ratio - 1) * step_x
    normalized = tf.stack([first_y / (padded_h - 1), first_x / (padded_w - 1),
                           last_y / (padded_h - 1), last_x / (padded_w - 1)], axis=1)
    crops = tf.image.crop_and_resize(padded, normalized, tf.cast(box_indices, tf.int32),
                                     (out_h * sampling_ratio, out_w * sampling_ratio), method="bilinear")
    if sampling_ratio == 1:
        return crops
    channels = tf.shape(crops)[-1]
    crops = tf.reshape(crops, (-1, out_h, sampling_ratio, out_w, sampling_ratio, channels))
    return tf.reduce_mean(crops, axis=[2, 4])


def assign_levels(boxes: tf.Tensor, canonical_size: float, canonical_level: int = 4,
                  min_level: int = 2, max_level: int = 5) -> tf.Tensor:
    """FPN level per box (R, int32): ``floor(k0 + log2(sqrt(area) / canonical_size))``, clamped.

    ``canonical_size`` is 224 in the FPN paper (for ~800-1333 px images).
    """
    heights = tf.maximum(boxes[:, 2] - boxes[:, 0], 0.0)
    widths = tf.maximum(boxes[:, 3] - boxes[:, 1], 0.0)
    scale = tf.sqrt(heights * widths)
    level = tf.floor(canonical_level + tf.math.log(scale / canonical_size + 1e-8) / tf.math.log(2.0) + 1e-6)
    return tf.cast(tf.clip_by_value(level, min_level, max_level), tf.int32)


def multilevel_roi_align(features: list[tf.Tensor], strides: list[int], boxes: tf.Tensor, box_indices: tf.Tensor,
                         output_size: tuple[int, int], canonical_size: float, sampling_ratio: int = 2,
                         min_level: int = 2) -> tf.Tensor:
    """ROIAlign of each box on its FPN level: ``features`` are [P2, P3, P4, P5] -> R x ph x pw x C."""
    levels = assign_levels(boxes, canonical_size, min_level=min_level, max_level=min_level + len(features) - 1) - min_level
    pooled, order = [], []
    for index, (level_features, stride) in enumerate(zip(features, strides)):
        selected = tf.where(tf.equal(levels, index))[:, 0]
        pooled.append(roi_align(level_features, tf.gather(boxes, selected), tf.gather(box_indices, selected),
                                stride, output_size, sampling_ratio))
        order.append(selected)
    pooled = tf.concat(pooled, axis=0)
    order = tf.cast(tf.concat(order, axis=0), tf.int32)
    return tf.gather(pooled, tf.math.invert_permutation(order))


def _paste_weights(starts: tf.Tensor, ends: tf.Tensor, length, size: int) -> tf.Tensor:
    """Bilinear weights ... x length x size that spread ``size`` mask cells over [start, end)
    of an axis of ``length`` pixels; pixels whose centre lies outside get weight 0."""
    centres = tf.cast(tf.range(length), tf.float32) + 0.5
    starts = starts[..., None]
    ends = ends[..., None]
    position = (centres - starts) / tf.maximum(ends - starts, 1e-6) * size - 0.5
    position = tf.clip_by_value(position, 0.0, size - 1.0)
    weights = tf.maximum(1.0 - tf.abs(position[..., None] - tf.cast(tf.range(size), tf.float32)), 0.0)
    inside = tf.cast((centres >= starts) & (centres < ends), tf.float32)
    return weights * inside[..., None]


def paste_masks(masks: tf.Tensor, boxes: tf.Tensor, height, width) -> tf.Tensor:
    """Paste masks ... x S x S into their boxes (... x 4 pixels) of a ``height x width`` image.

    Returns ... x height x width: bilinear interpolation of the mask cells (cell ``i`` centred
    at ``y1 + (i + 0.5) * (y2 - y1) / S``), edge cells extended up to the box edge, 0 outside
    the box (a pixel belongs to the box when its centre does).
    """
    size = masks.shape[-1]
    rows = _paste_weights(boxes[..., 0], boxes[..., 2], height, size)
    cols = _paste_weights(boxes[..., 1], boxes[..., 3], width, size)
    return tf.einsum("...hi,...ij,...wj->...hw", rows, masks, cols)


def paste_max(masks: tf.Tensor, boxes: tf.Tensor, keep: tf.Tensor, height, width, chunk: int = 16) -> tf.Tensor:
    """Per-pixel maximum B x H x W over the kept (B x D bool) pasted masks B x D x S x S; 0 where none."""
    result = tf.zeros(tf.stack([tf.shape(masks)[0], height, width]), tf.float32)
    detections = masks.shape[1]
    for start in range(0, detections, chunk):
        pasted = paste_masks(masks[:, start:start + chunk], boxes[:, start:start + chunk], height, width)
        pasted = pasted * tf.cast(keep[:, start:start + chunk], tf.float32)[:, :, None, None]
        result = tf.maximum(result, tf.reduce_max(pasted, axis=1))
    return result
