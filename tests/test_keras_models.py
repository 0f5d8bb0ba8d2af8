"""Keras models: registry, builds on 64x64 with random weights, SegNet unpooling, encoder weight files."""
from __future__ import annotations

import numpy as np
import pytest

import keras_semseg
from keras_semseg import SemsegError
from keras_semseg import registry, weights

SIZE = 64
SEMANTIC_MODELS = [name for name, entry in registry.MODELS.items() if entry.target == "mask"]  # maskrcnn: test_keras_maskrcnn.py


def test_registry_names_targets_and_lazy_import():
    assert keras_semseg.available_models() == ["unet", "deeplabv3plus", "segnet", "maskrcnn"]
    assert {name: keras_semseg.get_entry(name).target for name in keras_semseg.available_models()} == {
        "unet": "mask", "deeplabv3plus": "mask", "segnet": "mask", "maskrcnn": "instances"}
    assert keras_semseg.get_entry("maskrcnn").builder == "keras_semseg.models.maskrcnn:build"
    assert keras_semseg.get_entry("maskrcnn").compiles_itself


def test_unknown_model_lists_valid_names():
    with pytest.raises(SemsegError, match="unknown model 'segnett'.*did you mean 'segnet'.*unet, deeplabv3plus, segnet, maskrcnn"):
        keras_semseg.build_model("segnett", (SIZE, SIZE, 3), encoder_weights=None)


@pytest.mark.parametrize("shape", [(60, 60, 3), (64, 48, 3), (64, 64, 1), (16, 16, 3)])
def test_unusable_input_shape_is_refused(shape):
    with pytest.raises(SemsegError, match="multiple of 32|3-channel"):
        keras_semseg.build_model("unet", shape, encoder_weights=None)


def test_unknown_model_option_is_refused():
    with pytest.raises(SemsegError, match="model 'deeplabv3plus': bad option.*output_stride"):
        keras_semseg.build_model("deeplabv3plus", (SIZE, SIZE, 3), encoder_weights=None, output_stride=8)


def test_registered_but_missing_module_is_a_clear_error(monkeypatch):
    ghost = registry.ModelEntry("ghost", "keras_semseg.models.ghost_net:build", "mask", "vgg16")
    monkeypatch.setitem(registry.MODELS, "ghost", ghost)
    with pytest.raises(SemsegError, match="model 'ghost' is registered but .* not available"):
        keras_semseg.build_model("ghost", (SIZE, SIZE, 3), encoder_weights=None)


@pytest.fixture(scope="module")
def built_models():
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("name", SEMANTIC_MODELS)
def test_model_forward_backward_on_64(name, built_models):
    import tensorflow as tf

    model = keras_semseg.build_model(name, (SIZE, SIZE, 3), encoder_weights=None)
    built_models[name] = model
    images = tf.random.stateless_uniform((2, SIZE, SIZE, 3), seed=(1, 2))
    masks = tf.cast(images[..., :1] > 0.5, tf.float32)
    with tf.GradientTape() as tape:
        probabilities = model(images, training=True)
        loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(masks, probabilities))
    gradients = tape.gradient(loss, model.trainable_variables)
    assert probabilities.shape == (2, SIZE, SIZE, 1)
    assert probabilities.dtype == tf.float32
    values = probabilities.numpy()
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.std() > 0
    assert np.isfinite(loss.numpy())
    assert all(g is not None for g in gradients)
    assert all(np.isfinite(g.numpy()).all() for g in gradients if not isinstance(g, tf.IndexedSlices))
    assert sum(float(tf.reduce_sum(tf.abs(g))) > 0 for g in gradients) > 0.9 * len(gradients)


def test_segnet_unpooling_known_answer_4x4():
    from keras_semseg.models.segnet import MaxPoolingWithArgmax2D, MaxUnpooling2D

    image = np.array([[1, 2, 5, 0],
                      [3, 4, 1, 1],
                      [0, 0, 7, 8],
                      [9, 0, 6, 6]], np.float32).reshape(1, 4, 4, 1)
    pooled, indices = MaxPoolingWithArgmax2D()(image)
    assert pooled.numpy().reshape(2, 2).tolist() == [[4, 5], [9, 8]]
    assert indices.numpy().reshape(2, 2).tolist() == [[5, 2], [12, 11]]
    unpooled = MaxUnpooling2D()([pooled, indices]).numpy().reshape(4, 4)
    expected = np.array([[0, 0, 5, 0],
                         [0, 4, 0, 0],
                         [0, 0, 0, 8],
                         [9, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(unpooled, expected)


def test_segnet_unpooling_batch_and_channels_stay_apart():
    from keras_semseg.models.segnet import MaxPoolingWithArgmax2D, MaxUnpooling2D

    rng = np.random.default_rng(0)
    images = rng.permutation(2 * 4 * 4 * 3).astype(np.float32).reshape(2, 4, 4, 3)
    pooled, indices = MaxPoolingWithArgmax2D()(images)
    unpooled = MaxUnpooling2D()([pooled, indices]).numpy()
    blocks = images.reshape(2, 2, 2, 2, 2, 3).transpose(0, 1, 3, 5, 2, 4).reshape(2, 2, 2, 3, 4)
    expected = np.where(images == np.repeat(np.repeat(blocks.max(-1), 2, 1), 2, 2), images, 0)
    np.testing.assert_array_equal(unpooled, expected)


def test_parameter_counts_and_segnet_has_no_skip_connections(built_models):
    from keras_semseg.models import count_parameters
    from keras_semseg.models.segnet import MaxUnpooling2D

    segnet = built_models.get("segnet") or keras_semseg.build_model("segnet", (SIZE, SIZE, 3), encoder_weights=None)
    assert count_parameters(segnet)["total"] == 29_496_129
    decoder_convs = [layer for layer in segnet.layers if layer.name.startswith("decoder") and layer.name[-5:-1] == "conv"]
    assert len(decoder_convs) == 13
    for layer in decoder_convs:
        assert layer.input._keras_history.layer.name.startswith("decoder")
    assert sum(isinstance(layer, MaxUnpooling2D) for layer in segnet.layers) == 5


# ---------------------------------------------------------------- encoder weights

def _write_h5(path):
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("kernel", data=np.zeros((2, 2), np.float32))


def test_weights_none_and_local_file(tmp_path):
    assert weights.keras_application_weights("vgg16", None) is None
    assert weights.keras_application_weights("xception", "none") is None
    path = tmp_path / "my.h5"
    _write_h5(path)
    assert weights.keras_application_weights("vgg16", str(path)) == str(path)
    with pytest.raises(SemsegError, match="encoder weights file not found"):
        weights.keras_application_weights("vgg16", str(tmp_path / "missing.h5"))


def test_imagenet_weights_come_from_the_keras_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "_can_reach", lambda *args, **kwargs: pytest.fail("must not go online"))
    cached = tmp_path / "models" / "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_h5(cached)
    assert weights.keras_application_weights("xception", "imagenet") == str(cached)


@pytest.mark.parametrize("content", [b"", b"<html>503 Service Unavailable</html>", b"\x89HDF\r\n\x1a\n" + b"\0" * 40])
def test_corrupt_cached_weights_are_named_before_training(tmp_path, monkeypatch, content):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cached = tmp_path / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    cached.parent.mkdir()
    cached.write_bytes(content)
    with pytest.raises(SemsegError, match="delete it and retry") as caught:
        weights.keras_application_weights("vgg16", "imagenet")
    assert caught.value.path == str(cached)


@pytest.mark.parametrize("app, file_name", [
    ("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("xception", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("resnet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
])
def test_offline_missing_weights_is_one_clear_message(tmp_path, monkeypatch, app, file_name):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(weights, "_can_reach", lambda *args, **kwargs: False)
    with pytest.raises(SemsegError) as caught:
        weights.keras_application_weights(app, "imagenet")
    message = str(caught.value)
    assert "\n" not in message
    assert file_name in message
    assert str(tmp_path / "keras_home" / "models") in message
    assert "--encoder-weights none" in message


def test_offline_message_reaches_build_model(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(weights, "_can_reach", lambda *args, **kwargs: False)
    with pytest.raises(SemsegError, match="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        keras_semseg.build_model("segnet", (SIZE, SIZE, 3), encoder_weights="imagenet")


def test_unreachable_host_is_detected_quickly():
    import time

    started = time.perf_counter()
    assert weights._can_reach("192.0.2.1", 443, timeout=0.5) is False  # TEST-NET-1, never routed
    assert time.perf_counter() - started < 2.0


@pytest.mark.slow
def test_vgg16_file_loads_into_segnet_encoder_and_wrong_file_is_refused(tmp_path):
    import tensorflow as tf

    vgg = tf.keras.applications.VGG16(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    vgg.save_weights(str(tmp_path / "vgg16_notop.h5"), save_format="h5")
    segnet = keras_semseg.build_model("segnet", (SIZE, SIZE, 3), encoder_weights=str(tmp_path / "vgg16_notop.h5"))
    for name in ("block1_conv1", "block3_conv2", "block5_conv3"):
        for loaded, source in zip(segnet.get_layer(name).get_weights(), vgg.get_layer(name).get_weights()):
            np.testing.assert_array_equal(loaded, source)

    other = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    other.save_weights(str(tmp_path / "dense.h5"), save_format="h5")
    with pytest.raises(SemsegError, match="not vgg16 encoder weights"):
        keras_semseg.build_model("segnet", (SIZE, SIZE, 3), encoder_weights=str(tmp_path / "dense.h5"))
    with pytest.raises(SemsegError, match="not vgg16 encoder weights"):
        keras_semseg.build_model("unet", (SIZE, SIZE, 3), encoder_weights=str(tmp_path / "dense.h5"))
    with pytest.raises(SemsegError, match="not xception encoder weights"):
        keras_semseg.build_model("deeplabv3plus", (SIZE, SIZE, 3), encoder_weights=str(tmp_path / "vgg16_notop.h5"))
