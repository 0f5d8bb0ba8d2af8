"""Input pipeline: resizing, known geometric transforms, image/mask alignment under augmentation."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import tensorflow as tf  # noqa: E402

from data import in_memory  # noqa: E402
from data.synthetic import generate  # noqa: E402
from keras_semseg import SemsegError  # noqa: E402
from keras_semseg import pipeline  # noqa: E402

SIZE = 32


def _shapes() -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric binary pattern (two rectangles and an L) as image 1 x S x S x 3 and mask 1 x S x S x 1."""
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[3:9, 5:20] = 1
    mask[18:29, 24:27] = 1
    mask[20:23, 4:14] = 1
    mask[20:30, 4:7] = 1
    image = np.repeat(mask[None, ..., None], 3, axis=-1)
    return image, mask[None, ..., None]


def _transform(flip_h=False, flip_v=False, quarter_turns=0, angle=0.0, zoom=1.0):
    return pipeline.transform_matrices((SIZE, SIZE), tf.constant([flip_h]), tf.constant([flip_v]), tf.constant([quarter_turns]),
                                       tf.constant([angle]), tf.constant([zoom]))


@pytest.mark.parametrize("params, reference", [
    ({}, lambda a: a),
    ({"flip_h": True}, lambda a: a[:, :, ::-1]),
    ({"flip_v": True}, lambda a: a[:, ::-1]),
    ({"quarter_turns": 1}, lambda a: np.rot90(a, 1, axes=(1, 2))),
    ({"quarter_turns": 2}, lambda a: np.rot90(a, 2, axes=(1, 2))),
    ({"quarter_turns": 3}, lambda a: np.rot90(a, 3, axes=(1, 2))),
    ({"flip_h": True, "quarter_turns": 1}, lambda a: np.rot90(a, 1, axes=(1, 2))[:, :, ::-1]),
])
def test_known_transforms_are_exact_for_image_and_mask(params, reference):
    image, mask = _shapes()
    warped_image, warped_mask = pipeline.apply_transforms(tf.constant(image), tf.constant(mask), _transform(**params))
    np.testing.assert_array_equal(warped_mask.numpy(), reference(mask))
    np.testing.assert_allclose(warped_image.numpy(), reference(image), atol=1e-5)


def test_zoom_magnifies_about_the_centre():
    mask = np.zeros((1, SIZE, SIZE, 1), np.float32)
    mask[0, 12:20, 12:20, 0] = 1  # an 8x8 square centred in the image
    _, warped = pipeline.apply_transforms(tf.constant(np.repeat(mask, 3, -1)), tf.constant(mask), _transform(zoom=2.0))
    rows, cols = np.nonzero(warped.numpy()[0, ..., 0])
    assert warped.numpy().sum() == pytest.approx(256, abs=20)  # 16x16 after a 2x zoom
    assert rows.mean() == pytest.approx(15.5, abs=0.6) and cols.mean() == pytest.approx(15.5, abs=0.6)


def test_random_augmentation_keeps_image_and_mask_aligned():
    image, mask = _shapes()
    images, masks = np.repeat(image, 16, axis=0), np.repeat(mask, 16, axis=0)
    warped_images, warped_masks = pipeline.augment_batch(tf.constant(images), tf.constant(masks), tf.constant([3, 7], tf.int64))
    from_image = warped_images.numpy()[..., 0] > 0.5
    from_mask = warped_masks.numpy()[..., 0] > 0.5
    iou = (from_image & from_mask).sum((1, 2)) / (from_image | from_mask).sum((1, 2))
    assert iou.min() > 0.9
    assert set(np.unique(warped_masks.numpy())) <= {0.0, 1.0}
    assert warped_masks.dtype == tf.float32 and warped_images.shape == images.shape
    changed = [not np.array_equal(from_mask[i], mask[0, ..., 0] > 0.5) for i in range(16)]
    assert sum(changed) >= 12


def test_augmentation_keeps_instance_labels_integer():
    labels = np.zeros((2, SIZE, SIZE, 1), np.int32)
    labels[:, 2:10, 2:10] = 3
    labels[:, 15:25, 18:30] = 7
    images = np.repeat((labels > 0).astype(np.float32), 3, axis=-1)
    _, warped = pipeline.augment_batch(tf.constant(images), tf.constant(labels), tf.constant([0, 1], tf.int64))
    assert warped.dtype == tf.int32
    assert set(np.unique(warped.numpy())) <= {0, 3, 7}


def test_augmentation_is_reproducible_for_a_seed():
    image, mask = _shapes()
    first = pipeline.augment_batch(tf.constant(np.repeat(image, 4, 0)), tf.constant(np.repeat(mask, 4, 0)), tf.constant([5, 5], tf.int64))
    second = pipeline.augment_batch(tf.constant(np.repeat(image, 4, 0)), tf.constant(np.repeat(mask, 4, 0)), tf.constant([5, 5], tf.int64))
    np.testing.assert_array_equal(first[1].numpy(), second[1].numpy())


def test_resizing_bilinear_images_nearest_masks():
    labels = np.zeros((64, 64, 1), np.int32)
    labels[10:40, 10:30] = 5
    small = pipeline.resize_targets(tf.constant(labels), 32).numpy()
    assert small.dtype == np.int32 and set(np.unique(small)) == {0, 5}
    assert (small == 5).sum() == 15 * 10
    image = np.linspace(0, 1, 64 * 64 * 3, dtype=np.float32).reshape(64, 64, 3)
    resized = pipeline.resize_images(tf.constant(image), 32).numpy()
    assert resized.shape == (32, 32, 3) and 0.0 <= resized.min() and resized.max() <= 1.0


def test_sample_targets():
    sample = generate(1, 48, "sparse", seed=3)[0]
    mask = pipeline.sample_target(sample, "mask")
    labels = pipeline.sample_target(sample, "instances")
    assert mask.shape == (48, 48, 1) and mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
    assert labels.dtype == np.int32 and labels.max() == sample.labels.max()
    with pytest.raises(SemsegError, match="unknown training target"):
        pipeline.sample_target(sample, "boxes")


@pytest.mark.parametrize("size", [0, 31, 48, 100, 64.5, "big"])
def test_image_size_must_be_a_multiple_of_32(size):
    with pytest.raises(SemsegError, match="multiple of 32"):
        pipeline.check_image_size(size)


@pytest.mark.parametrize("in_memory_cache", [True, False])
def test_datasets_yield_resized_batches(monkeypatch, in_memory_cache):
    samples = generate(5, 48, "sparse", seed=1)
    dataset = in_memory(samples)
    if not in_memory_cache:
        monkeypatch.setattr(pipeline, "memory_budget", lambda: 0)
    source, cached = pipeline.source_dataset(dataset, dataset.names, SIZE, "mask", shuffle_seed=0)
    assert cached is in_memory_cache
    batches = list(pipeline.training_dataset(source, 5, 2, augment=True, seed=0))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert batches[0][0].shape[1:] == (SIZE, SIZE, 3) and batches[0][1].shape[1:] == (SIZE, SIZE, 1)
    evaluation = list(pipeline.evaluation_dataset(source, 5))
    expected = np.stack([pipeline.resize_targets(tf.constant(pipeline.sample_target(s, "mask")), SIZE).numpy() for s in samples])
    if cached:
        np.testing.assert_array_equal(evaluation[0][1].numpy(), expected)
    else:
        assert sorted(evaluation[0][1].numpy().sum((1, 2, 3)).tolist()) == sorted(expected.sum((1, 2, 3)).tolist())
