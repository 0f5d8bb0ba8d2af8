"""tf.data input pipeline and geometric augmentation (core TensorFlow only).

Images are resized to ``image_size`` x ``image_size`` with bilinear interpolation
(antialiased when shrinking), masks and instance labels with nearest neighbour.
Training batches get one random geometric transform per image, applied identically to
the image (bilinear) and its mask or labels (nearest): horizontal and vertical flips,
a 90-degree rotation, a small arbitrary rotation and a zoom, with reflected borders.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from data import Dataset, Sample

from .errors import SemsegError
from .registry import check_image_size
from .tf_env import tensorflow

tf = tensorflow()

TARGETS = ("mask", "instances")
__all__ = ["Augmentation", "augment_batch", "apply_transforms", "check_image_size", "evaluation_dataset", "load_arrays",
           "resize_images", "resize_targets", "sample_target", "shard_by_data", "source_dataset", "training_dataset",
           "transform_matrices"]
MEMORY_CAP_BYTES = 2 * 1024 ** 3


@dataclass(frozen=True)
class Augmentation:
    """Random geometric augmentation settings (training only)."""

    flip_horizontal: float = 0.5
    flip_vertical: float = 0.5
    rotate_90: bool = True
    max_rotation_deg: float = 15.0
    zoom_min: float = 0.85
    zoom_max: float = 1.15
    fill_mode: str = "REFLECT"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_target(sample: Sample, target: str) -> np.ndarray:
    """H x W x 1 training target: float32 0/1 cell mask (``"mask"``) or int32 instance labels (``"instances"``)."""
    if target == "mask":
        return sample.mask[..., None].astype(np.float32)
    if target == "instances":
        return sample.labels[..., None].astype(np.int32)
    raise SemsegError(f"unknown training target '{target}'; valid: {', '.join(TARGETS)}")


def resize_images(images: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """(B x) H x W x 3 float32 -> (B x) size x size x 3, bilinear (antialiased when shrinking)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return tf.image.resize(tf.cast(images, tf.float32), size, method="bilinear", antialias=True)


def resize_targets(targets: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """(B x) H x W x 1 masks or labels -> (B x) size x size x 1, nearest neighbour, dtype kept."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return tf.cast(tf.image.resize(targets, size, method="nearest"), targets.dtype)


def resize_pair(image: tf.Tensor, target: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    return resize_images(image, size), resize_targets(target, size)


def load_arrays(dataset: Dataset, names: Sequence[str], image_size: int, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Load and resize ``names``: images N x S x S x 3 float32, targets N x S x S x 1 (float32 or int32)."""
    images = np.empty((len(names), image_size, image_size, 3), np.float32)
    targets = np.empty((len(names), image_size, image_size, 1), np.int32 if target == "instances" else np.float32)
    for position, name in enumerate(names):
        sample = dataset.get(name)
        image, labels = resize_pair(sample.image, sample_target(sample, target), image_size)
        images[position] = image.numpy()
        targets[position] = labels.numpy()
    return images, targets


def array_bytes(n_images: int, image_size: int) -> int:
    """Memory needed to hold ``n_images`` resized images and targets (bytes)."""
    return n_images * image_size * image_size * (3 + 1) * 4


def memory_budget() -> int:
    """Bytes the in-memory cache may use: 30% of available RAM, at most 2 GiB."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 8 * 1024 ** 3
    return int(min(MEMORY_CAP_BYTES, 0.3 * available))


def _rotation_90(k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    cosines = tf.constant([1.0, 0.0, -1.0, 0.0])
    sines = tf.constant([0.0, 1.0, 0.0, -1.0])
    return tf.gather(cosines, k), tf.gather(sines, k)


def transform_matrices(size: tuple[int, int], flip_horizontal: tf.Tensor, flip_vertical: tf.Tensor, quarter_turns: tf.Tensor,
                       angle_rad: tf.Tensor, zoom: tf.Tensor) -> tf.Tensor:
    """B x 8 projective transforms (output pixel -> input pixel, about the image centre).

    Per image the output is the input turned by ``quarter_turns`` (int 0..3, each 90
    degrees counter-clockwise as displayed, like ``np.rot90``) and by ``angle_rad``,
    then flipped (left-right when ``flip_horizontal``, up-down when ``flip_vertical``)
    and zoomed by ``zoom`` (> 1 magnifies). Flips and quarter turns of square images
    land exactly on the pixel grid.
    """
    height, width = size
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    sign_x = tf.where(tf.cast(flip_horizontal, tf.bool), -1.0, 1.0)
    sign_y = tf.where(tf.cast(flip_vertical, tf.bool), -1.0, 1.0)
    cos_q, sin_q = _rotation_90(tf.cast(quarter_turns, tf.int32))
    cos_a, sin_a = tf.cos(tf.cast(angle_rad, tf.float32)), tf.sin(tf.cast(angle_rad, tf.float32))
    cos_t = cos_a * cos_q - sin_a * sin_q
    sin_t = sin_a * cos_q + cos_a * sin_q
    inverse_zoom = 1.0 / tf.cast(zoom, tf.float32)
    m00 = inverse_zoom * cos_t * sign_x
    m01 = -inverse_zoom * sin_t * sign_y
    m10 = inverse_zoom * sin_t * sign_x
    m11 = inverse_zoom * cos_t * sign_y
    offset_x = centre_x - m00 * centre_x - m01 * centre_y
    offset_y = centre_y - m10 * centre_x - m11 * centre_y
    zeros = tf.zeros_like(m00)
    return tf.stack([m00, m01, offset_x, m10, m11, offset_y, zeros, zeros], axis=1)


def apply_transforms(images: tf.Tensor, targets: tf.Tensor, transforms: tf.Tensor, fill_mode: str = "REFLECT") -> tuple[tf.Tensor, tf.Tensor]:
    """Warp B x H x W x C images (bilinear) and B x H x W x 1 targets (nearest) with the same B x 8 transforms."""
    output_shape = tf.shape(images)[1:3]
    warped_images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=output_shape, fill_value=0.0,
        interpolation="BILINEAR", fill_mode=fill_mode)
    warped_targets = tf.raw_ops.ImageProjectiveTransformV3(
        images=targets, transforms=transforms, output_shape=output_shape, fill_value=0.0,
        interpolation="NEAREST", fill_mode=fill_mode)
    return warped_images, warped_targets


def random_transforms(batch: tf.Tensor, size: tuple[int, int], seed: tf.Tensor, settings: Augmentation) -> tf.Tensor:
    """B x 8 random transforms drawn from ``settings`` with a stateless ``seed`` (shape [2])."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
    flip_h = tf.random.stateless_uniform([batch], seeds[0]) < settings.flip_horizontal
    flip_v = tf.random.stateless_uniform([batch], seeds[1]) < settings.flip_vertical
    if settings.rotate_90 and size[0] == size[1]:
        quarter_turns = tf.random.stateless_uniform([batch], seeds[2], minval=0, maxval=4, dtype=tf.int32)
    else:
        quarter_turns = tf.zeros([batch], tf.int32)
    limit = math.radians(settings.max_rotation_deg)
    angle = tf.random.stateless_uniform([batch], seeds[3], minval=-limit, maxval=limit)
    zoom = tf.random.stateless_uniform([batch], seeds[4], minval=settings.zoom_min, maxval=settings.zoom_max)
    return transform_matrices(size, flip_h, flip_v, quarter_turns, angle, zoom)


def augment_batch(images: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor, settings: Augmentation = Augmentation()) -> tuple[tf.Tensor, tf.Tensor]:
    """One random transform per image, the same for the image and its target."""
    size = (int(images.shape[1]), int(images.shape[2]))
    transforms = random_transforms(tf.shape(images)[0], size, seed, settings)
    warped_images, warped_targets = apply_transforms(images, targets, transforms, settings.fill_mode)
    return tf.clip_by_value(warped_images, 0.0, 1.0), warped_targets


def _streamed(dataset: Dataset, names: Sequence[str], image_size: int, target: str, shuffle_seed: int | None) -> tf.data.Dataset:
    target_dtype = tf.int32 if target == "instances" else tf.float32
    order_rng = np.random.default_rng(shuffle_seed)

    def generate() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = list(names) if shuffle_seed is None else [names[i] for i in order_rng.permutation(len(names))]
        for name in order:
            sample = dataset.get(name)
            yield sample.image, sample_target(sample, target)

    signature = (tf.TensorSpec((None, None, 3), tf.float32), tf.TensorSpec((None, None, 1), target_dtype))
    stream = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return stream.map(lambda image, labels: resize_pair(image, labels, image_size), num_parallel_calls=tf.data.AUTOTUNE)


def source_dataset(dataset: Dataset, names: Sequence[str], image_size: int, target: str,
                   shuffle_seed: int | None = None) -> tuple[tf.data.Dataset, bool]:
    """Unbatched (image S x S x 3, target S x S x 1) pairs and whether they are cached in memory.

    When they fit (``memory_budget``), every sample is loaded and resized once, here
    (bad files fail now); otherwise they are streamed from disk each epoch (in a new
    order each epoch when ``shuffle_seed`` is given).
    """
    if array_bytes(len(names), image_size) <= memory_budget():
        images, targets = load_arrays(dataset, names, image_size, target)
        return tf.data.Dataset.from_tensor_slices((images, targets)), True
    return _streamed(dataset, names, image_size, target, shuffle_seed), False


def training_dataset(source: tf.data.Dataset, shuffle_buffer: int, batch_size: int, augment: bool, seed: int,
                     settings: Augmentation = Augmentation(), repeat: bool = False) -> tf.data.Dataset:
    """Shuffled batches, augmented in a parallel map when ``augment``, prefetched; endless when ``repeat``."""
    batches = source.shuffle(max(shuffle_buffer, 1), seed=seed, reshuffle_each_iteration=True)
    batches = (batches.repeat() if repeat else batches).batch(batch_size)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        batches = tf.data.Dataset.zip((batches, seeds)).map(
            lambda pair, batch_seed: augment_batch(pair[0], pair[1], batch_seed, settings),
            num_parallel_calls=tf.data.AUTOTUNE)
    return shard_by_data(batches.prefetch(tf.data.AUTOTUNE))


def evaluation_dataset(source: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Batches in order, no augmentation, prefetched."""
    return shard_by_data(source.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def shard_by_data(batches: tf.data.Dataset) -> tf.data.Dataset:
    """``batches`` sharded by data under ``MultiWorkerMirroredStrategy``: every worker builds the same global batches
    (same seeds) and keeps its replicas' share of each, so a global batch holds the images one device would see."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return batches.with_options(options)
