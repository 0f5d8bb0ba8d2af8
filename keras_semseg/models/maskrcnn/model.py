"""Mask R-CNN (ResNet-50 + FPN) as a ``tf.keras.Model`` that trains on instance labels and
predicts a semantic probability map.

- ``model(images)`` / ``model.predict(images)``: images B x H x W x 3 float32 in [0, 1] ->
  B x H x W x 1 cell probability = per-pixel maximum, over the detections with score >=
  ``score_threshold``, of their pasted mask probability (0 where there is none).
- ``model.detect(images)``: per image a dict of ``boxes`` K x 4 (y1, x1, y2, x2 pixels),
  ``scores`` K, ``masks`` K x H x W probabilities, best score first.
- ``fit``/``evaluate`` take (images, labels B x H x W x 1 int32 instance ids, 0 = background)
  and log ``loss`` (the sum of the five losses below), each loss and ``pixel_accuracy`` (the
  semantic output > 0.5 against labels > 0). Compile with an optimizer only.

Images whose sides are not multiples of 32 are padded (bottom, right) inside the model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ...errors import SemsegError
from ...tf_env import tensorflow
from . import boxes as box_ops
from .anchors import RATIOS, STRIDES, default_anchor_sizes, pyramid_anchors
from .heads import BoxHead, MaskHead, RPNHead, resnet50_fpn
from .roi_align import multilevel_roi_align, paste_masks, paste_max
from .targets import HEAD_WEIGHTS, RPN_WEIGHTS, instance_boxes, mask_targets, roi_targets, rpn_targets

tf = tensorflow()

LOSS_NAMES = ("rpn_objectness_loss", "rpn_box_loss", "classifier_loss", "box_loss", "mask_loss")
BGR_MEAN = (103.939, 116.779, 123.68)
MIN_BOX_SIZE = 1e-3
POOL_SIZE = 7
MASK_POOL_SIZE = 14
REFERENCE_AREA = 1024 * 1024


@dataclass(frozen=True)
class MaskRCNNConfig:
    """Settings. ``None`` means: derived from the image size (see ``resolve``)."""

    image_size: tuple[int, int] = (256, 256)
    anchor_sizes: tuple[float, ...] | None = None
    anchor_ratios: tuple[float, ...] = RATIOS
    fpn_channels: int = 256
    rpn_pre_nms_train: int = 2000
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_train: int | None = None
    rpn_post_nms_test: int | None = None
    rpn_nms_iou: float = 0.7
    rpn_batch_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_foreground_iou: float = 0.7
    rpn_background_iou: float = 0.3
    rois_per_image: int | None = None
    roi_positive_fraction: float = 0.25
    roi_foreground_iou: float = 0.5
    roi_canonical_size: float | None = None
    box_head_dim: int = 1024
    mask_head_channels: int = 256
    mask_rois_per_image: int | None = None
    detections_per_image: int = 100
    score_threshold: float = 0.05
    detection_nms_iou: float = 0.5
    max_instances: int = 128
    train_bn: bool | None = None

    def resolve(self, random_init: bool) -> "MaskRCNNConfig":
        """Fill the size-dependent defaults for ``image_size`` (H, W).

        anchor sizes: ``default_anchor_sizes`` ((32, ..., 512) at 1024 px, scaled, >= 2 x stride);
        proposals after NMS: 2000 (train) / 1000 (test) scaled by image area / 1024**2, at least
        512 / 300; rois per image: 512 scaled likewise, at least 128; FPN level assignment
        canonical size: 7 x the smallest anchor (224 at 1024 px); mask head trained on every
        foreground roi (at most rois_per_image x roi_positive_fraction); batch norm trained only from
        random init (frozen when fine-tuning ImageNet weights).
        """
        height, width = self.image_size
        fraction = height * width / REFERENCE_AREA
        anchors = tuple(float(s) for s in (self.anchor_sizes or default_anchor_sizes(height, width)))
        return dataclasses.replace(
            self,
            anchor_sizes=anchors,
            anchor_ratios=tuple(float(r) for r in self.anchor_ratios),
            rpn_post_nms_train=self.rpn_post_nms_train or int(min(2000, max(512, round(2000 * fraction)))),
            rpn_post_nms_test=self.rpn_post_nms_test or int(min(1000, max(300, round(1000 * fraction)))),
            rois_per_image=self.rois_per_image or int(min(512, max(128, round(512 * fraction)))),
            roi_canonical_size=float(self.roi_canonical_size or 7 * anchors[0]),
            mask_rois_per_image=self.mask_rois_per_image or int(
                (self.rois_per_image or int(min(512, max(128, round(512 * fraction))))) * self.roi_positive_fraction) or 1,
            train_bn=random_init if self.train_bn is None else bool(self.train_bn),
        )

    def check(self) -> None:
        if len(self.anchor_sizes) != len(STRIDES):
            raise SemsegError(f"anchor_sizes needs one size per FPN level P2-P6 ({len(STRIDES)}), got {self.anchor_sizes}")
        positive_ints = ("fpn_channels", "rpn_pre_nms_train", "rpn_pre_nms_test", "rpn_post_nms_train", "rpn_post_nms_test",
                         "rpn_batch_per_image", "rois_per_image", "box_head_dim", "mask_head_channels", "mask_rois_per_image",
                         "detections_per_image", "max_instances")
        for name in positive_ints:
            if int(getattr(self, name)) < 1:
                raise SemsegError(f"Mask R-CNN setting {name} must be a positive integer, got {getattr(self, name)}")
        for name in ("rpn_positive_fraction", "roi_positive_fraction", "score_threshold", "rpn_nms_iou", "detection_nms_iou"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise SemsegError(f"Mask R-CNN setting {name} must lie in [0, 1], got {getattr(self, name)}")


def make_config(height: int, width: int, random_init: bool, **options) -> MaskRCNNConfig:
    """Resolved settings for an H x W model; ``SemsegError`` naming the valid settings on a typo."""
    names = [field.name for field in dataclasses.fields(MaskRCNNConfig) if field.name != "image_size"]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise SemsegError(f"unknown Mask R-CNN setting(s) {', '.join(unknown)}; valid settings: {', '.join(names)}")
    try:
        config = MaskRCNNConfig(image_size=(int(height), int(width)), **options).resolve(random_init)
        config.check()
    except (TypeError, ValueError) as error:
        raise SemsegError(f"bad Mask R-CNN setting ({error}); settings: {options}") from None
    return config


def _smooth_l1(difference: tf.Tensor, beta: float = 1.0 / 9.0) -> tf.Tensor:
    absolute = tf.abs(difference)
    return tf.reduce_sum(tf.where(absolute < beta, 0.5 * absolute ** 2 / beta, absolute - 0.5 * beta), axis=-1)


def _pad_to_32(tensor: tf.Tensor) -> tf.Tensor:
    """Pad B x H x W x C at the bottom and right to multiples of 32."""
    height, width = tf.shape(tensor)[1], tf.shape(tensor)[2]
    return tf.pad(tensor, [[0, 0], [0, (-height) % 32], [0, (-width) % 32], [0, 0]])


def _flatten_rois(rois: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """B x R x 4 -> (B*R x 4, image index B*R)."""
    batch, count = tf.shape(rois)[0], tf.shape(rois)[1]
    return tf.reshape(rois, (-1, 4)), tf.repeat(tf.range(batch), count)


class MaskRCNN(tf.keras.Model):
    """Mask R-CNN with a ResNet-50 + FPN backbone for one object class (cell)."""

    def __init__(self, config: MaskRCNNConfig, backbone_weights: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.backbone = resnet50_fpn(backbone_weights, config.fpn_channels, config.train_bn)
        self.rpn_head = RPNHead(config.fpn_channels, len(config.anchor_ratios), name="rpn_head")
        self.box_head = BoxHead(config.box_head_dim, name="box_head")
        self.mask_head = MaskHead(config.mask_head_channels, name="mask_head")
        self.loss_trackers = [tf.keras.metrics.Mean(name=name) for name in ("loss",) + LOSS_NAMES]
        self.accuracy_tracker = tf.keras.metrics.Mean(name="pixel_accuracy")

    def create_variables(self) -> None:
        """Create every weight (for ``save_weights``/``load_weights`` and counting) without a full forward pass."""
        features = self.backbone(tf.zeros((1, 64, 64, 3), tf.float32), training=False)
        self.rpn_head(features[0])
        self.box_head(tf.zeros((1, POOL_SIZE, POOL_SIZE, self.config.fpn_channels), tf.float32))
        self.mask_head(tf.zeros((1, MASK_POOL_SIZE, MASK_POOL_SIZE, self.config.fpn_channels), tf.float32))
        self.built = True

    def compile(self, optimizer="adam", **kwargs):
        """Compile with an optimizer only (the model has its own losses); never with XLA."""
        if kwargs.get("loss") is not None:
            raise SemsegError("Mask R-CNN computes its own losses; compile it with an optimizer only")
        kwargs["jit_compile"] = False
        super().compile(optimizer=optimizer, **kwargs)

    @property
    def metrics(self):
        return self.loss_trackers + [self.accuracy_tracker]

    def get_config(self):
        return {"config": dataclasses.asdict(self.config)}

    # Forward pieces -------------------------------------------------------------------

    def _features(self, images: tf.Tensor, training: bool) -> list[tf.Tensor]:
        """Images B x H x W x 3 in [0, 1] (H, W multiples of 32) -> [P2, ..., P6]."""
        bgr = images[..., ::-1] * 255.0 - tf.constant(BGR_MEAN, tf.float32)
        return self.backbone(bgr, training=training)

    def _rpn(self, features: list[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(objectness logits B x N, deltas B x N x 4, anchors N x 4) over all levels."""
        outputs = [self.rpn_head(level) for level in features]
        shapes = [(tf.shape(level)[1], tf.shape(level)[2]) for level in features]
        anchors = pyramid_anchors(shapes, self.config.anchor_sizes, STRIDES, self.config.anchor_ratios)
        return tf.concat([o[0] for o in outputs], 1), tf.concat([o[1] for o in outputs], 1), anchors

    def _proposals(self, logits, deltas, anchors, height, width, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """Top-scoring anchors, decoded, clipped and NMS'd: (boxes B x P x 4, valid B x P)."""
        config = self.config
        pre_nms = config.rpn_pre_nms_train if training else config.rpn_pre_nms_test
        post_nms = config.rpn_post_nms_train if training else config.rpn_post_nms_test
        logits = tf.stop_gradient(logits)
        deltas = tf.stop_gradient(deltas)
        top_logits, index = tf.math.top_k(logits, tf.minimum(pre_nms, tf.shape(logits)[1]))
        decoded = box_ops.decode(tf.gather(deltas, index, batch_dims=1), tf.gather(anchors, index), RPN_WEIGHTS)
        decoded = box_ops.clip(decoded, height, width)
        large_enough = ((decoded[..., 2] - decoded[..., 0]) >= MIN_BOX_SIZE) & ((decoded[..., 3] - decoded[..., 1]) >= MIN_BOX_SIZE)
        scores = tf.where(large_enough, tf.sigmoid(top_logits), -1.0)
        nms = tf.image.combined_non_max_suppression(decoded[:, :, None, :], scores[:, :, None], post_nms, post_nms,
                                                    iou_threshold=config.rpn_nms_iou, score_threshold=0.0, clip_boxes=False)
        valid = tf.range(post_nms)[None, :] < nms.valid_detections[:, None]
        return nms.nmsed_boxes, valid

    def _pool(self, features, rois, box_indices, size: int) -> tf.Tensor:
        return multilevel_roi_align(features[:4], STRIDES[:4], rois, box_indices, (size, size), self.config.roi_canonical_size)

    def _detections(self, features, proposals, proposal_valid, height, width):
        """Box head, score filter and NMS, mask head on the kept detections.

        Returns boxes B x D x 4, scores B x D, mask probabilities B x D x 28 x 28, keep B x D.
        """
        config = self.config
        batch, count = tf.shape(proposals)[0], tf.shape(proposals)[1]
        flat, box_indices = _flatten_rois(proposals)
        class_logits, deltas = self.box_head(self._pool(features, flat, box_indices, POOL_SIZE))
        scores = tf.reshape(tf.nn.softmax(class_logits)[:, 1], (batch, count))
        boxes = box_ops.clip(tf.reshape(box_ops.decode(deltas, flat, HEAD_WEIGHTS), (batch, count, 4)), height, width)
        large_enough = ((boxes[..., 2] - boxes[..., 0]) >= MIN_BOX_SIZE) & ((boxes[..., 3] - boxes[..., 1]) >= MIN_BOX_SIZE)
        scores = tf.where(proposal_valid & large_enough, scores, -1.0)
        limit = config.detections_per_image
        nms = tf.image.combined_non_max_suppression(
            boxes[:, :, None, :], scores[:, :, None], limit, limit, iou_threshold=config.detection_nms_iou,
            score_threshold=max(config.score_threshold - 1e-6, 0.0), clip_boxes=False)
        keep = (tf.range(limit)[None, :] < nms.valid_detections[:, None]) & (nms.nmsed_scores >= config.score_threshold)
        where = tf.where(keep)
        kept_boxes = tf.gather_nd(nms.nmsed_boxes, where)
        pooled = self._pool(features, kept_boxes, tf.cast(where[:, 0], tf.int32), MASK_POOL_SIZE)
        probabilities = tf.sigmoid(self.mask_head(pooled))
        size = 2 * MASK_POOL_SIZE
        masks = tf.scatter_nd(where, probabilities, tf.stack([tf.cast(batch, tf.int64), limit, size, size]))
        return nms.nmsed_boxes, nms.nmsed_scores, masks, keep

    def _semantic(self, features, logits, deltas, anchors, height, width) -> tf.Tensor:
        """Semantic probability B x H x W from the inference path."""
        proposals, valid = self._proposals(logits, deltas, anchors, height, width, training=False)
        boxes, _, masks, keep = self._detections(features, proposals, valid, height, width)
        return paste_max(masks, boxes, keep, height, width)

    def call(self, images, training=False):
        images = tf.convert_to_tensor(images, tf.float32)
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        features = self._features(_pad_to_32(images), training=False)
        logits, deltas, anchors = self._rpn(features)
        return self._semantic(features, logits, deltas, anchors, height, width)[..., None]

    # Training -------------------------------------------------------------------------

    def _compute_losses(self, images, labels, training: bool):
        """The five losses and what the semantic output needs: (dict, features, rpn outputs)."""
        config = self.config
        images = tf.convert_to_tensor(images, tf.float32)
        labels = tf.convert_to_tensor(labels)
        if labels.shape.rank == 3:
            labels = labels[..., None]
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        features = self._features(_pad_to_32(images), training=training)
        logits, deltas, anchors = self._rpn(features)
        renumbered, gt_boxes, gt_valid = instance_boxes(_pad_to_32(tf.cast(labels, tf.int32))[..., 0], config.max_instances)

        positive, negative, anchor_targets = rpn_targets(
            anchors, gt_boxes, gt_valid, config.rpn_batch_per_image, config.rpn_positive_fraction,
            config.rpn_foreground_iou, config.rpn_background_iou)
        sampled = tf.cast(positive | negative, tf.float32)
        n_sampled = tf.maximum(tf.reduce_sum(sampled), 1.0)
        objectness = tf.nn.sigmoid_cross_entropy_with_logits(tf.cast(positive, tf.float32), logits)
        losses = {"rpn_objectness_loss": tf.reduce_sum(objectness * sampled) / n_sampled,
                  "rpn_box_loss": tf.reduce_sum(_smooth_l1(deltas - anchor_targets) * tf.cast(positive, tf.float32)) / n_sampled}

        proposals, proposal_valid = self._proposals(logits, deltas, anchors, height, width, training=True)
        targets = roi_targets(proposals, proposal_valid, gt_boxes, gt_valid, config.rois_per_image,
                              config.roi_positive_fraction, config.roi_foreground_iou)
        flat, box_indices = _flatten_rois(targets["rois"])
        class_logits, box_deltas = self.box_head(self._pool(features, flat, box_indices, POOL_SIZE))
        valid = tf.cast(tf.reshape(targets["valid"], [-1]), tf.float32)
        foreground = tf.reshape(targets["foreground"], [-1])
        n_valid = tf.maximum(tf.reduce_sum(valid), 1.0)
        classification = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(foreground, tf.int32), class_logits)
        box_error = _smooth_l1(box_deltas - tf.reshape(targets["box_targets"], (-1, 4)))
        losses["classifier_loss"] = tf.reduce_sum(classification * valid) / n_valid
        losses["box_loss"] = tf.reduce_sum(box_error * tf.cast(foreground, tf.float32)) / n_valid

        where = tf.where(targets["foreground"][:, :config.mask_rois_per_image])
        mask_rois = tf.gather_nd(targets["rois"], where)
        mask_images = tf.cast(where[:, 0], tf.int32)
        instance_ids = tf.gather_nd(targets["matched"], where) + 1
        mask_logits = self.mask_head(self._pool(features, mask_rois, mask_images, MASK_POOL_SIZE))
        mask_truth = mask_targets(renumbered, mask_rois, mask_images, instance_ids, 2 * MASK_POOL_SIZE)
        mask_error = tf.nn.sigmoid_cross_entropy_with_logits(mask_truth, mask_logits)
        losses["mask_loss"] = tf.math.divide_no_nan(tf.reduce_sum(mask_error), tf.cast(tf.size(mask_error), tf.float32))
        return losses, features, (logits, deltas, anchors), labels

    def _update_metrics(self, losses, total, semantic, labels):
        self.loss_trackers[0].update_state(total)
        for tracker, name in zip(self.loss_trackers[1:], LOSS_NAMES):
            tracker.update_state(losses[name])
        truth = labels[..., 0] > 0
        correct = tf.cast(tf.equal(semantic > 0.5, truth), tf.float32)
        self.accuracy_tracker.update_state(tf.reduce_mean(correct, axis=[1, 2]))
        return {tracker.name: tracker.result() for tracker in self.metrics}

    def train_step(self, data):
        images, labels, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            losses, features, rpn_outputs, labels = self._compute_losses(images, labels, training=True)
            total = tf.add_n(list(losses.values()))
        variables = self.trainable_variables
        gradients = tape.gradient(total, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        height, width = tf.shape(labels)[1], tf.shape(labels)[2]
        features = [tf.stop_gradient(level) for level in features]
        semantic = self._semantic(features, *rpn_outputs, height, width)
        return self._update_metrics(losses, total, semantic, labels)

    def test_step(self, data):
        images, labels, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
        losses, features, rpn_outputs, labels = self._compute_losses(images, labels, training=False)
        total = tf.add_n(list(losses.values()))
        height, width = tf.shape(labels)[1], tf.shape(labels)[2]
        semantic = self._semantic(features, *rpn_outputs, height, width)
        return self._update_metrics(losses, total, semantic, labels)

    # Instance output ------------------------------------------------------------------

    @tf.function(reduce_retracing=True)
    def _detect_graph(self, images):
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        features = self._features(_pad_to_32(images), training=False)
        logits, deltas, anchors = self._rpn(features)
        proposals, valid = self._proposals(logits, deltas, anchors, height, width, training=False)
        return self._detections(features, proposals, valid, height, width)

    def detect(self, images, batch_size: int = 2) -> list[dict[str, np.ndarray]]:
        """Instances per image of ``images`` (B x H x W x 3 or H x W x 3, float in [0, 1]).

        Each dict: ``boxes`` K x 4 float32 (y1, x1, y2, x2 pixels), ``scores`` K float32
        (>= score_threshold, descending), ``masks`` K x H x W float32 pasted probabilities.
        """
        images = np.asarray(images, np.float32)
        if images.ndim == 3:
            images = images[None]
        height, width = images.shape[1:3]
        results = []
        for start in range(0, len(images), batch_size):
            boxes, scores, masks, keep = (t.numpy() for t in self._detect_graph(tf.constant(images[start:start + batch_size])))
            for image_boxes, image_scores, image_masks, image_keep in zip(boxes, scores, masks, keep):
                kept_boxes = image_boxes[image_keep]
                pasted = paste_masks(tf.constant(image_masks[image_keep]), tf.constant(kept_boxes), height, width).numpy()
                results.append({"boxes": kept_boxes.astype(np.float32), "scores": image_scores[image_keep].astype(np.float32),
                                "masks": pasted.astype(np.float32)})
        return results
