"""U-Net with a VGG16 encoder and skip connections (segmentation_models 1.0.1)."""
from __future__ import annotations

import contextlib
import io
from typing import Any

from ..errors import SemsegError
from ..tf_env import tensorflow
from ..weights import keras_application_weights, wrong_weights_error
from . import preprocessing_layer, probability_output


def _segmentation_models() -> Any:
    tensorflow()
    with contextlib.redirect_stdout(io.StringIO()):
        import segmentation_models
    return segmentation_models


def build(input_shape: tuple[int, int, int] = (256, 256, 3), encoder_weights: Any = "imagenet", **options: Any) -> Any:
    """``segmentation_models.Unet("vgg16", classes=1, activation="sigmoid")``, taking [0, 1] RGB.

    The segmentation_models network (up to its logits) is nested as layer ``unet_vgg16``
    between the VGG16 ImageNet preprocessing and a float32 sigmoid.

    The model is B x H x W x 3 float32 in [0, 1] -> B x H x W x 1 float32 probabilities.
    ``options`` go to ``segmentation_models.Unet`` (for example ``decoder_filters``).
    """
    keras = tensorflow().keras

    weights_path = keras_application_weights("vgg16", encoder_weights)
    sm = _segmentation_models()
    try:
        unet = sm.Unet("vgg16", input_shape=input_shape, classes=1, activation="sigmoid",
                       encoder_weights=weights_path, **options)
    except (ValueError, OSError, KeyError) as error:
        if weights_path is None:
            raise
        raise wrong_weights_error(weights_path, "vgg16", error) from None
    except TypeError as error:
        raise SemsegError(f"unet: bad model option ({error})") from None
    core = keras.Model(unet.input, unet.get_layer("final_conv").output, name="unet_vgg16")
    inputs = keras.Input(shape=input_shape, name="image")
    logits = core(preprocessing_layer("caffe")(inputs))
    return keras.Model(inputs, probability_output(logits), name="unet")
