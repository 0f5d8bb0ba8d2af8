"""Networks of Mask R-CNN: ResNet-50 + FPN backbone, RPN head, box head and mask head."""
from __future__ import annotations

from ...tf_env import tensorflow

tf = tensorflow()

RESNET50_STAGES = ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out")


def _normal(stddev: float):
    return tf.keras.initializers.RandomNormal(stddev=stddev)


def _fpn_init():
    return tf.keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")


def resnet50_fpn(weights: str | None, channels: int = 256, train_bn: bool = True) -> tf.keras.Model:
    """Backbone model: ImageNet-preprocessed images B x H x W x 3 (H, W multiples of 32) ->
    [P2, P3, P4, P5, P6] with ``channels`` channels at strides 4, 8, 16, 32, 64.

    ``weights``: a Keras ResNet50 no-top ``.h5`` file or None (random init). With
    ``train_bn=False`` the batch-norm layers are frozen (moving statistics, fixed scale and
    offset), as for fine-tuning from ImageNet; with ``train_bn=True`` their moving averages use
    momentum 0.9 (Keras: 0.99) so that a short run from random init gets usable statistics.
    """
    resnet = tf.keras.applications.ResNet50(include_top=False, weights=weights, input_shape=(None, None, 3))
    for layer in resnet.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            if train_bn:
                layer.momentum = 0.9
            else:
                layer.trainable = False
    stages = [resnet.get_layer(name).output for name in RESNET50_STAGES]
    laterals = [tf.keras.layers.Conv2D(channels, 1, kernel_initializer=_fpn_init(), name=f"fpn_c{level}_lateral")(stage)
                for level, stage in zip(range(2, 6), stages)]
    merged = [laterals[-1]]
    for level in (4, 3, 2):
        upsampled = tf.keras.layers.UpSampling2D(2, interpolation="nearest", name=f"fpn_p{level + 1}_up")(merged[0])
        merged.insert(0, tf.keras.layers.Add(name=f"fpn_p{level}_add")([upsampled, laterals[level - 2]]))
    outputs = [tf.keras.layers.Conv2D(channels, 3, padding="same", kernel_initializer=_fpn_init(), name=f"fpn_p{level}")(x)
               for level, x in zip(range(2, 6), merged)]
    outputs.append(tf.keras.layers.MaxPooling2D(1, strides=2, padding="same", name="fpn_p6")(outputs[-1]))
    return tf.keras.Model(resnet.input, outputs, name="resnet50_fpn")


class RPNHead(tf.keras.layers.Layer):
    """Shared over levels: 3x3 conv + ReLU, then per anchor one objectness logit and 4 deltas."""

    def __init__(self, channels: int, anchors_per_position: int, **kwargs):
        super().__init__(**kwargs)
        self.anchors_per_position = anchors_per_position
        self.conv = tf.keras.layers.Conv2D(channels, 3, padding="same", activation="relu", kernel_initializer=_normal(0.01), name="conv")
        self.objectness = tf.keras.layers.Conv2D(anchors_per_position, 1, kernel_initializer=_normal(0.01), name="objectness")
        self.deltas = tf.keras.layers.Conv2D(4 * anchors_per_position, 1, kernel_initializer=_normal(0.01), name="deltas")

    def call(self, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Level features B x h x w x C -> (logits B x (h*w*A), deltas B x (h*w*A) x 4)."""
        hidden = self.conv(features)
        batch = tf.shape(features)[0]
        logits = tf.reshape(self.objectness(hidden), (batch, -1))
        deltas = tf.reshape(self.deltas(hidden), (batch, -1, 4))
        return logits, deltas


class BoxHead(tf.keras.layers.Layer):
    """Two fully connected layers on 7x7 pooled features, then 2 class logits (background,
    cell) and 4 box deltas for the cell class."""

    def __init__(self, hidden: int = 1024, **kwargs):
        super().__init__(**kwargs)
        self.flatten = tf.keras.layers.Flatten()
        self.fc1 = tf.keras.layers.Dense(hidden, activation="relu", name="fc1")
        self.fc2 = tf.keras.layers.Dense(hidden, activation="relu", name="fc2")
        self.classes = tf.keras.layers.Dense(2, kernel_initializer=_normal(0.01), name="classes")
        self.deltas = tf.keras.layers.Dense(4, kernel_initializer=_normal(0.001), name="deltas")

    def call(self, pooled: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Pooled R x 7 x 7 x C -> (class logits R x 2, deltas R x 4)."""
        hidden = self.fc2(self.fc1(self.flatten(pooled)))
        return self.classes(hidden), self.deltas(hidden)


class MaskHead(tf.keras.layers.Layer):
    """Four 3x3 convs + ReLU, a 2x2 stride-2 transposed conv + ReLU and a 1x1 conv to one
    mask logit: pooled R x 14 x 14 x C -> R x 28 x 28 logits."""

    def __init__(self, channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.convs = [tf.keras.layers.Conv2D(channels, 3, padding="same", activation="relu", kernel_initializer="he_normal", name=f"conv{i}")
                      for i in range(1, 5)]
        self.upsample = tf.keras.layers.Conv2DTranspose(channels, 2, strides=2, activation="relu", kernel_initializer="he_normal", name="deconv")
        self.logits = tf.keras.layers.Conv2D(1, 1, kernel_initializer="he_normal", name="logits")

    def call(self, pooled: tf.Tensor) -> tf.Tensor:
        hidden = pooled
        for conv in self.convs:
            hidden = conv(hidden)
        return self.logits(self.upsample(hidden))[..., 0]
