"""SegNet: VGG16-style encoder (13 conv + BN) and a mirrored decoder that unpools at the argmax indices.

Each encoder stage ends in ``tf.nn.max_pool_with_argmax``; the matching decoder stage
puts every value back at the position its maximum came from (``MaxUnpooling2D``, a
scatter at the stored indices, zeros elsewhere). No skip connections carry features.
Encoder convs are named as in Keras VGG16 (``block1_conv1`` ...) and take its ImageNet
weights wherever the kernel shapes match.
"""
from __future__ import annotations

from typing import Any

from ..errors import SemsegError
from ..tf_env import tensorflow
from ..weights import keras_application_weights, wrong_weights_error
from . import preprocessing_layer, probability_output

tf = tensorflow()
keras = tf.keras
layers = tf.keras.layers

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


@keras.utils.register_keras_serializable(package="keras_semseg")
class MaxPoolingWithArgmax2D(layers.Layer):
    """2x2 max pooling, stride 2: B x H x W x C -> (B x H/2 x W/2 x C values, same-shape int64 flat indices).

    Indices are into the flattened input including the batch:
    ``((b * H + y) * W + x) * C + c`` (``include_batch_in_index=True``).
    """

    def call(self, inputs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        values, indices = tf.nn.max_pool_with_argmax(inputs, ksize=2, strides=2, padding="SAME",
                                                     include_batch_in_index=True)
        return values, tf.stop_gradient(indices)

    def compute_output_shape(self, input_shape: Any) -> Any:
        batch, height, width, channels = input_shape
        pooled = (batch, None if height is None else height // 2, None if width is None else width // 2, channels)
        return pooled, pooled


@keras.utils.register_keras_serializable(package="keras_semseg")
class MaxUnpooling2D(layers.Layer):
    """Inverse of ``MaxPoolingWithArgmax2D``: scatter B x h x w x C values to B x 2h x 2w x C at the indices."""

    def call(self, inputs: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        values, indices = inputs
        shape = tf.shape(values, out_type=tf.int64)
        output_shape = tf.stack([shape[0], shape[1] * 2, shape[2] * 2, shape[3]])
        flat_size = tf.reduce_prod(output_shape)
        flat = tf.scatter_nd(tf.reshape(tf.cast(indices, tf.int64), [-1, 1]), tf.reshape(values, [-1]),
                             tf.reshape(flat_size, [1]))
        unpooled = tf.reshape(flat, output_shape)
        static = values.shape
        unpooled.set_shape([static[0], None if static[1] is None else static[1] * 2,
                            None if static[2] is None else static[2] * 2, static[3]])
        return unpooled

    def compute_output_shape(self, input_shape: Any) -> Any:
        batch, height, width, channels = input_shape[0]
        return batch, None if height is None else height * 2, None if width is None else width * 2, channels


def _conv_bn_relu(x: tf.Tensor, filters: int, name: str) -> tf.Tensor:
    x = layers.Conv2D(filters, 3, padding="same", name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def load_vgg16_encoder(model: keras.Model, weights_path: str) -> int:
    """Copy Keras VGG16 ImageNet conv weights into same-named convs of ``model`` whose shapes match.

    Returns how many convs were loaded; ``SemsegError`` if the file is not VGG16 weights
    or no conv matches.
    """
    try:
        vgg = keras.applications.VGG16(include_top=False, weights=weights_path, input_shape=(None, None, 3))
    except (ValueError, OSError, KeyError) as error:
        raise wrong_weights_error(weights_path, "vgg16", error) from None
    loaded = 0
    for source in vgg.layers:
        if not isinstance(source, layers.Conv2D):
            continue
        try:
            target = model.get_layer(source.name)
        except ValueError:
            continue
        source_weights = source.get_weights()
        if [w.shape for w in target.get_weights()] == [w.shape for w in source_weights]:
            target.set_weights(source_weights)
            loaded += 1
    if loaded == 0:
        raise SemsegError(f"{weights_path}: no VGG16 encoder conv matches this SegNet's layers (check base_filters)")
    return loaded


def build(input_shape: tuple[int, int, int] = (256, 256, 3), encoder_weights: Any = "imagenet",
          base_filters: int = 64) -> keras.Model:
    """SegNet: B x H x W x 3 float32 in [0, 1] -> B x H x W x 1 float32 probabilities.

    ``base_filters`` scales every stage (64 is VGG16; smaller values give a lighter net
    that no longer matches the ImageNet weights).
    """
    if base_filters < 1:
        raise SemsegError(f"segnet: base_filters must be positive, got {base_filters}")
    weights_path = keras_application_weights("vgg16", encoder_weights)
    stages = [tuple(width * base_filters // 64 for width in stage) for stage in VGG16_STAGES]
    inputs = keras.Input(shape=input_shape, name="image")
    x = preprocessing_layer("caffe")(inputs)
    pool_indices = []
    for stage_number, widths in enumerate(stages, start=1):
        for conv_number, filters in enumerate(widths, start=1):
            x = _conv_bn_relu(x, filters, f"block{stage_number}_conv{conv_number}")
        x, indices = MaxPoolingWithArgmax2D(name=f"block{stage_number}_pool")(x)
        pool_indices.append(indices)
    for stage_number in range(len(stages), 0, -1):
        x = MaxUnpooling2D(name=f"decoder{stage_number}_unpool")([x, pool_indices[stage_number - 1]])
        widths = list(stages[stage_number - 1])
        outputs = widths[:-1] + ([stages[stage_number - 2][-1]] if stage_number > 1 else [widths[-1]])
        for conv_number, filters in enumerate(outputs, start=1):
            x = _conv_bn_relu(x, filters, f"decoder{stage_number}_conv{conv_number}")
    logits = layers.Conv2D(1, 1, name="classifier")(x)
    model = keras.Model(inputs, probability_output(logits), name="segnet")
    if weights_path is not None:
        load_vgg16_encoder(model, weights_path)
    return model
