"""Training targets from instance label images, in batched TF ops (fixed shapes, no loops).

Instances are the label ids of each image (0 = background); they are renumbered 1..K in
increasing id order, so gt index ``m`` (0-based) is label ``m + 1`` of the renumbered image.
"""
from __future__ import annotations

from ...tf_env import tensorflow
from . import boxes as box_ops

tf = tensorflow()

RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def renumber(labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Labels B x H x W (any non-negative ids) -> (B x H x W ids 1..K in id order, counts K per image)."""

    def one(image_labels):
        flat = tf.reshape(image_labels, [-1])
        ids = tf.sort(tf.unique(tf.concat([tf.zeros([1], flat.dtype), flat], 0))[0])
        renumbered = tf.cast(tf.searchsorted(ids, flat), tf.int32)
        return tf.reshape(renumbered, tf.shape(image_labels)), tf.size(ids, tf.int32) - 1

    return tf.map_fn(one, tf.cast(labels, tf.int32),
                     fn_output_signature=(tf.TensorSpec(None, tf.int32), tf.TensorSpec([], tf.int32)))


def instance_boxes(labels: tf.Tensor, max_instances: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-instance boxes from labels B x H x W (or B x H x W x 1).

    Returns (renumbered labels B x H x W int32, boxes B x M x 4 pixel (y1, x1, y2, x2),
    valid B x M bool) with M = ``max_instances``. An image with more than M instances
    stops training with an error naming the setting.
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 4:
        labels = labels[..., 0]
    renumbered, counts = renumber(labels)
    check = tf.debugging.assert_less_equal(
        counts, max_instances,
        message=f"Mask R-CNN: an image has more instances than max_instances={max_instances}; "
                "build the model with a larger max_instances")
    with tf.control_dependencies([check]):
        renumbered = tf.identity(renumbered)
    shape = tf.shape(renumbered)
    batch, height, width = shape[0], shape[1], shape[2]
    segments = max_instances + 1
    segment_ids = renumbered + tf.range(batch)[:, None, None] * segments
    rows = tf.broadcast_to(tf.range(height)[None, :, None], shape)
    cols = tf.broadcast_to(tf.range(width)[None, None, :], shape)
    count = batch * segments
    flat_ids = tf.reshape(segment_ids, [-1])
    y1 = tf.math.unsorted_segment_min(tf.reshape(rows, [-1]), flat_ids, count)
    x1 = tf.math.unsorted_segment_min(tf.reshape(cols, [-1]), flat_ids, count)
    y2 = tf.math.unsorted_segment_max(tf.reshape(rows, [-1]), flat_ids, count) + 1
    x2 = tf.math.unsorted_segment_max(tf.reshape(cols, [-1]), flat_ids, count) + 1
    pixels = tf.math.unsorted_segment_sum(tf.ones_like(flat_ids), flat_ids, count)
    found = tf.reshape(pixels > 0, (batch, segments))[:, 1:]
    boxes = tf.cast(tf.reshape(tf.stack([y1, x1, y2, x2], axis=-1), (batch, segments, 4))[:, 1:], tf.float32)
    boxes = tf.where(found[..., None], boxes, 0.0)
    return renumbered, boxes, found


def _match(candidates: tf.Tensor, gt_boxes: tf.Tensor, gt_valid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """IoU B x N x M (-1 for missing gt), best IoU B x N (-1 if no gt) and its gt index B x N."""
    overlaps = box_ops.iou(candidates, gt_boxes)
    overlaps = tf.where(gt_valid[:, None, :], overlaps, -1.0)
    return overlaps, tf.reduce_max(overlaps, axis=2), tf.argmax(overlaps, axis=2, output_type=tf.int32)


def _kth_largest(keys: tf.Tensor, k: tf.Tensor, max_k: int) -> tf.Tensor:
    """The k-th largest value per row of keys B x N (k B int32 in 1..max_k); -1 when k < 1."""
    top = tf.math.top_k(keys, tf.minimum(max_k, tf.shape(keys)[1])).values
    top = tf.concat([top, -tf.ones_like(top[:, :1])], axis=1)
    index = tf.clip_by_value(k - 1, 0, tf.shape(top)[1] - 1)
    value = tf.gather(top, index, batch_dims=1)
    return tf.where(k >= 1, value, 2.0)


def sample_balanced(positive: tf.Tensor, negative: tf.Tensor, total: int, positive_fraction: float,
                    seed: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Random subsets of positive and negative B x N (bool) with at most ``total * fraction``
    positives and ``total`` in all per image (fewer when there are not enough)."""
    max_positive = int(total * positive_fraction)
    positive_keys = tf.where(positive, tf.random.uniform(tf.shape(positive), seed=seed), -1.0)
    negative_keys = tf.where(negative, tf.random.uniform(tf.shape(negative), seed=seed), -1.0)
    n_positive = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1), max_positive)
    keep_positive = positive & (positive_keys >= _kth_largest(positive_keys, n_positive, max_positive)[:, None])
    n_negative = tf.minimum(tf.reduce_sum(tf.cast(negative, tf.int32), axis=1), total - n_positive)
    keep_negative = negative & (negative_keys >= _kth_largest(negative_keys, n_negative, total)[:, None])
    return keep_positive, keep_negative


def rpn_targets(anchors: tf.Tensor, gt_boxes: tf.Tensor, gt_valid: tf.Tensor, batch_per_image: int = 256,
                positive_fraction: float = 0.5, foreground_iou: float = 0.7,
                background_iou: float = 0.3) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Sampled anchors and targets: (positive B x N bool, negative B x N bool, deltas B x N x 4).

    An anchor is positive with IoU >= ``foreground_iou`` with some instance, or when it is
    (one of) the best anchor(s) of an instance; negative below ``background_iou``.
    """
    overlaps, best, matched = _match(anchors[None], gt_boxes, gt_valid)
    best_per_gt = tf.reduce_max(overlaps, axis=1, keepdims=True)
    is_best_of_gt = tf.reduce_any((overlaps == best_per_gt) & (best_per_gt > 0.0) & gt_valid[:, None, :], axis=2)
    positive = (best >= foreground_iou) | is_best_of_gt
    negative = (best < background_iou) & ~positive
    positive, negative = sample_balanced(positive, negative, batch_per_image, positive_fraction)
    matched_boxes = tf.gather(gt_boxes, matched, batch_dims=1)
    deltas = box_ops.encode(matched_boxes, anchors[None], RPN_WEIGHTS)
    return positive, negative, deltas


def roi_targets(proposals: tf.Tensor, proposal_valid: tf.Tensor, gt_boxes: tf.Tensor, gt_valid: tf.Tensor,
                rois_per_image: int = 512, positive_fraction: float = 0.25,
                foreground_iou: float = 0.5) -> dict[str, tf.Tensor]:
    """Sample R = ``rois_per_image`` rois per image from the proposals plus the gt boxes.

    Returns rois B x R x 4, foreground B x R bool, valid B x R bool (False for padding when
    there are too few candidates), box targets B x R x 4 (head weights 10, 10, 5, 5) and the
    matched gt index B x R. Foreground rois come first in each row, in random order.
    """
    candidates = tf.concat([proposals, gt_boxes], axis=1)
    candidate_valid = tf.concat([proposal_valid, gt_valid], axis=1)
    _, best, matched = _match(candidates, gt_boxes, gt_valid)
    positive = candidate_valid & (best >= foreground_iou)
    negative = candidate_valid & (best < foreground_iou)
    positive, negative = sample_balanced(positive, negative, rois_per_image, positive_fraction)
    kind = 2 * tf.cast(positive, tf.int32) + tf.cast(negative, tf.int32)
    shuffle = tf.where(kind > 0, 0.5 * tf.random.uniform(tf.shape(kind)), 0.0)
    order = tf.math.top_k(tf.cast(kind, tf.float32) + shuffle, tf.minimum(rois_per_image, tf.shape(kind)[1])).indices
    rois = tf.gather(candidates, order, batch_dims=1)
    chosen = tf.gather(kind, order, batch_dims=1)
    matched = tf.gather(matched, order, batch_dims=1)
    targets = box_ops.encode(tf.gather(gt_boxes, matched, batch_dims=1), rois, HEAD_WEIGHTS)
    return {"rois": rois, "foreground": chosen == 2, "valid": chosen > 0, "box_targets": targets, "matched": matched}


def mask_targets(labels: tf.Tensor, rois: tf.Tensor, box_indices: tf.Tensor, instance_ids: tf.Tensor,
                 size: int = 28) -> tf.Tensor:
    """Soft mask targets R x size x size in [0, 1]: the fraction of 2 x 2 nearest-pixel samples
    inside each roi (R x 4 pixels, on image ``box_indices``) that carry its instance id
    (R int32) in the renumbered ``labels`` B x H x W."""
    height = tf.cast(tf.shape(labels)[1], tf.float32)
    width = tf.cast(tf.shape(labels)[2], tf.float32)
    samples = 2 * size
    step_y = (rois[:, 2] - rois[:, 0]) / samples
    step_x = (rois[:, 3] - rois[:, 1]) / samples
    first_y = rois[:, 0] + 0.5 * step_y - 0.5
    first_x = rois[:, 1] + 0.5 * step_x - 0.5
    last_y = first_y + (samples - 1) * step_y
    last_x = first_x + (samples - 1) * step_x
    normalized = tf.stack([first_y / tf.maximum(height - 1, 1.0), first_x / tf.maximum(width - 1, 1.0),
                           last_y / tf.maximum(height - 1, 1.0), last_x / tf.maximum(width - 1, 1.0)], axis=1)
    crops = tf.image.crop_and_resize(tf.cast(labels, tf.float32)[..., None], normalized, tf.cast(box_indices, tf.int32),
                                     (samples, samples), method="nearest", extrapolation_value=0.0)[..., 0]
    inside = tf.cast(tf.equal(crops, tf.cast(instance_ids, tf.float32)[:, None, None]), tf.float32)
    return tf.reduce_mean(tf.reshape(inside, (-1, size, 2, size, 2)), axis=[2, 4])
