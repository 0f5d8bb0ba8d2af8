"""One module per architecture; helpers shared by the builders (TensorFlow imported when called).

Every model takes RGB images B x H x W x 3 float32 in [0, 1] and does its encoder's
ImageNet preprocessing inside, so training, prediction and other callers never need to
know which encoder a model has.
"""
from __future__ import annotations

from typing import Any

from ..tf_env import tensorflow

VGG_BGR_MEAN = (103.939, 116.779, 123.68)


def caffe_preprocess(images: Any) -> Any:
    """[0, 1] RGB -> the VGG16 ImageNet input: BGR, 0..255, mean subtracted (Keras "caffe" mode)."""
    tf = tensorflow()

    bgr = tf.reverse(tf.cast(images, tf.float32), axis=[-1]) * 255.0
    return tf.cast(bgr - tf.constant(VGG_BGR_MEAN, tf.float32), images.dtype)


def preprocessing_layer(mode: str, name: str = "imagenet_preprocess") -> Any:
    """A Keras layer mapping [0, 1] RGB to the encoder's ImageNet input ("caffe": VGG, "tf": Xception, [-1, 1])."""
    layers = tensorflow().keras.layers

    if mode == "caffe":
        return layers.Lambda(caffe_preprocess, name=name)
    if mode == "tf":
        return layers.Rescaling(2.0, offset=-1.0, name=name)
    raise ValueError(f"unknown preprocessing mode '{mode}'")


def probability_output(logits: Any, name: str = "probability") -> Any:
    """Sigmoid of 1-channel logits, kept float32 under mixed precision."""
    layers = tensorflow().keras.layers

    return layers.Activation("sigmoid", dtype="float32", name=name)(logits)


def count_parameters(model: Any) -> dict[str, int]:
    """``{"total", "trainable", "non_trainable"}`` parameter counts of a Keras model."""
    import numpy as np

    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    non_trainable = int(sum(np.prod(v.shape) for v in model.non_trainable_weights))
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}
