"""DeepLabV3+ with a tf.keras.applications.Xception encoder (output stride 16).

Encoder: Keras Xception up to ``block13_sepconv2_bn`` (entry and middle flow and the
first half of the exit flow: stride 16, 1024 channels); the last stride-2 block is
dropped, so the ASPP sees stride-16 features. ASPP: 1x1 conv, 3x3 atrous convs at rates
6, 12 and 18, and image pooling, 256 channels each, fused by a 1x1 conv. Decoder:
low-level features from the stride-4 stage (``block3_sepconv2_bn``, 256 channels,
reduced to 48), the ASPP output resized onto them (bilinear), two 3x3 convs, a 1x1
classifier, bilinear upsampling to the input size and a float32 sigmoid. Keras Xception
uses 'valid' padding in its stem, so the stride-4 map is 63x63 for a 256 input; the
bilinear resizes absorb that.
"""
from __future__ import annotations

from typing import Any

from ..errors import SemsegError
from ..tf_env import tensorflow
from ..weights import keras_application_weights, wrong_weights_error
from . import preprocessing_layer, probability_output

ENCODER_OUTPUT = "block13_sepconv2_bn"
LOW_LEVEL = "block3_sepconv2_bn"


def _conv_bn_relu(x: Any, filters: int, kernel: int, name: str, dilation: int = 1) -> Any:
    layers = tensorflow().keras.layers

    x = layers.Conv2D(filters, kernel, padding="same", dilation_rate=dilation, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _resize_to(x: Any, height: int, width: int, name: str) -> Any:
    layers = tensorflow().keras.layers

    if tuple(x.shape[1:3]) == (height, width):
        return x
    return layers.Resizing(height, width, interpolation="bilinear", name=name)(x)


def aspp(features: Any, filters: int = 256, rates: tuple[int, ...] = (6, 12, 18), dropout: float = 0.1) -> Any:
    """Atrous spatial pyramid pooling on B x h x w x C features -> B x h x w x ``filters``."""
    layers = tensorflow().keras.layers

    height, width = int(features.shape[1]), int(features.shape[2])
    branches = [_conv_bn_relu(features, filters, 1, "aspp_1x1")]
    for rate in rates:
        branches.append(_conv_bn_relu(features, filters, 3, f"aspp_rate{rate}", dilation=rate))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_image_pool")(features)
    pooled = layers.Conv2D(filters, 1, activation="relu", name="aspp_image_pool_conv")(pooled)
    branches.append(layers.UpSampling2D((height, width), name="aspp_image_pool_up")(pooled))
    x = layers.Concatenate(name="aspp_concat")(branches)
    x = _conv_bn_relu(x, filters, 1, "aspp_project")
    return layers.Dropout(dropout, name="aspp_dropout")(x) if dropout else x


def build(input_shape: tuple[int, int, int] = (256, 256, 3), encoder_weights: Any = "imagenet",
          aspp_filters: int = 256, aspp_rates: tuple[int, ...] = (6, 12, 18), low_level_filters: int = 48,
          decoder_filters: int = 256, dropout: float = 0.1) -> Any:
    """DeepLabV3+ (Xception): B x H x W x 3 float32 in [0, 1] -> B x H x W x 1 float32 probabilities."""
    keras = tensorflow().keras
    layers = tensorflow().keras.layers

    weights_path = keras_application_weights("xception", encoder_weights)
    inputs = keras.Input(shape=input_shape, name="image")
    preprocessed = preprocessing_layer("tf")(inputs)
    try:
        xception = keras.applications.Xception(include_top=False, weights=weights_path, input_tensor=preprocessed)
    except (ValueError, OSError, KeyError) as error:
        if weights_path is None:
            raise SemsegError(f"deeplabv3plus: cannot build the Xception encoder ({error})") from None
        raise wrong_weights_error(weights_path, "xception", error) from None
    encoder = layers.Activation("relu", name="encoder_relu")(xception.get_layer(ENCODER_OUTPUT).output)
    x = aspp(encoder, aspp_filters, tuple(aspp_rates), dropout)

    low_level = layers.Activation("relu", name="low_level_relu")(xception.get_layer(LOW_LEVEL).output)
    low_level = _conv_bn_relu(low_level, low_level_filters, 1, "decoder_low_level")
    x = _resize_to(x, int(low_level.shape[1]), int(low_level.shape[2]), "decoder_upsample")
    x = layers.Concatenate(name="decoder_concat")([x, low_level])
    x = _conv_bn_relu(x, decoder_filters, 3, "decoder_conv1")
    x = _conv_bn_relu(x, decoder_filters, 3, "decoder_conv2")
    logits = layers.Conv2D(1, 1, name="classifier")(x)
    logits = _resize_to(logits, input_shape[0], input_shape[1], "output_upsample")
    return keras.Model(inputs, probability_output(logits), name="deeplabv3plus")
