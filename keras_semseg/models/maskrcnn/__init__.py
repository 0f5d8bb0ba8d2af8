"""Mask R-CNN (ResNet-50 + FPN) for the semantic study, in Keras 2 / TensorFlow 2.15.

``build(input_shape, encoder_weights, **settings)`` returns a ``tf.keras.Model`` that trains
on instance labels with its own losses and predicts B x H x W x 1 cell probabilities (the
per-pixel maximum of its detections' masks); see ``model.py`` for the contract and
``MaskRCNNConfig`` for the settings. Importing this package loads no framework.
"""
from __future__ import annotations

from typing import Any

from ...errors import SemsegError
from ...registry import TENSORFLOW_HINT
from ...tf_env import tensorflow

__all__ = ["build", "count_parameters"]


def build(input_shape: tuple[int, int, int] = (256, 256, 3), encoder_weights: Any = "imagenet", **options: Any):
    """Mask R-CNN for images ``input_shape`` (H, W, 3), H and W multiples of 32.

    encoder_weights: ``"imagenet"`` or a path (resolved by ``keras_semseg.weights``), or
    None / ``"none"`` for a random ResNet-50. ``options`` are ``MaskRCNNConfig`` settings.
    The model always computes in float32 (a mixed-precision global policy is ignored).
    """
    try:
        height, width, channels = (int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise SemsegError(f"input shape must be (height, width, 3), got {input_shape!r}") from None
    if channels != 3:
        raise SemsegError(f"Mask R-CNN takes 3-channel (RGB) input, got {channels} channel(s)")
    if height < 32 or width < 32 or height % 32 or width % 32:
        raise SemsegError(f"Mask R-CNN image size must be a multiple of 32, got {height}x{width}")
    random_init = encoder_weights is None or (isinstance(encoder_weights, str) and encoder_weights.lower() == "none")
    try:
        from .model import MaskRCNN, make_config
    except ModuleNotFoundError as error:
        if error.name in ("tensorflow", "keras"):
            raise SemsegError(TENSORFLOW_HINT) from None
        raise

    config = make_config(height, width, random_init, **options)
    weights_path = None
    if not random_init:
        from ...weights import keras_application_weights

        weights_path = keras_application_weights("resnet50", encoder_weights)
    tf = tensorflow()

    policy = tf.keras.mixed_precision.global_policy()
    try:
        tf.keras.mixed_precision.set_global_policy("float32")
        try:
            model = MaskRCNN(config, None if weights_path is None else str(weights_path), name="maskrcnn")
        except (ValueError, OSError) as error:
            if weights_path is None:
                raise
            from ...weights import wrong_weights_error

            raise wrong_weights_error(str(weights_path), "resnet50", error) from None
        model.create_variables()
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)
    return model


def count_parameters(model) -> dict[str, int]:
    """Parameter counts per part (backbone + FPN, RPN, box head, mask head), their total
    (batch-norm moving statistics included, metric state excluded) and the trainable ones."""
    import numpy as np

    def count(weights) -> int:
        return int(sum(np.prod(w.shape) for w in weights))

    parts = {name: count(getattr(model, attribute).weights) for name, attribute in
             (("backbone_fpn", "backbone"), ("rpn_head", "rpn_head"), ("box_head", "box_head"), ("mask_head", "mask_head"))}
    return {"total": sum(parts.values()), "trainable": count(model.trainable_weights), **parts}
