"""Semantic segmentation of MSC micrographs with Keras: U-Net, DeepLabV3+, SegNet, Mask R-CNN.

Importing this package loads no framework; ``build_model`` imports TensorFlow when called.
"""
from __future__ import annotations

from typing import Any

from .errors import SemsegError
from .registry import MODELS, ModelEntry, available_models, get_entry

__all__ = ["MODELS", "ModelEntry", "SemsegError", "available_models", "build_model", "get_entry"]


def build_model(name: str, input_shape: tuple[int, int, int] = (256, 256, 3), encoder_weights: Any = "imagenet", **options: Any) -> Any:
    """Build model ``name`` for ``input_shape`` (H x W x 3, H and W multiples of 32).

    encoder_weights: ``"imagenet"`` (the Keras ImageNet file, from the local cache or
    downloaded), ``None``/``"none"`` (random init) or a path to a Keras ``.h5`` weights
    file of the encoder's architecture. The model takes images B x H x W x 3 float32 in
    [0, 1] and outputs B x H x W x 1 float32 cell probabilities.
    """
    from .registry import build

    return build(name, input_shape, encoder_weights, **options)
