"""Probability maps from a trained run: numpy images in, numpy probabilities out.

Each image is resized to ``image_size`` x ``image_size`` (bilinear, antialiased when
shrinking; ``image_size`` must be a multiple of 32), run through the model, and the
probability map is resized back to the image's own size (bilinear) and clipped to [0, 1].
Training resizes the same way (masks and labels with nearest neighbour).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.errors import MscsegError
from data.run_record import RUN_JSON, read_record

from .errors import SemsegError
from .tf_env import tensorflow


def load_run(run_dir: str | Path, which: str = "best") -> tuple[Any, dict]:
    """``(model, settings)`` of the training run in ``run_dir`` with its ``best`` or ``last`` weights.

    ``settings`` is the ``settings`` of the run's ``run.json``; the model is built for
    ``settings["image_size"]`` and needs no encoder weights file.
    """
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        raise SemsegError(f"which weights: 'best' or 'last', got '{which}'")
    run_path = run_dir / RUN_JSON
    if not run_path.is_file():
        raise SemsegError(f"{run_path}: not found; is {run_dir} a semseg-train output folder?")
    try:
        record = read_record(run_dir)
    except MscsegError as error:
        raise SemsegError(f"unreadable run record ({error.problem})", error.path) from None
    settings = record.settings
    weights_path = run_dir / f"{which}.weights.h5"
    if not weights_path.is_file():
        raise SemsegError(f"{weights_path}: weights file not found (status of the run: {record.status})")
    from . import build_model

    size = int(settings["image_size"])
    model = build_model(settings["model"], (size, size, 3), encoder_weights=None, **settings.get("model_options", {}))
    if not model.built:
        tf = tensorflow()

        model(tf.zeros((1, size, size, 3), tf.float32), training=False)
    try:
        model.load_weights(str(weights_path))
    except (ValueError, OSError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SemsegError(f"{weights_path}: does not fit a {settings['model']} model ({first_line})") from None
    return model, settings


def _check_image(image: Any, position: int) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3 or array.shape[2] != 3:
        raise SemsegError(f"image {position}: expected H x W x 3, got shape {array.shape}")
    return array


def predict_probs(model: Any, images: Sequence[np.ndarray], image_size: int, batch_size: int = 8) -> list[np.ndarray]:
    """H x W float32 cell probabilities in [0, 1] for each H x W x 3 float32 image in [0, 1], at its own size."""
    tf = tensorflow()

    from .pipeline import resize_images
    from .registry import check_image_size

    size = check_image_size(image_size)
    arrays = [_check_image(image, position) for position, image in enumerate(images)]
    results: list[np.ndarray] = []
    for start in range(0, len(arrays), batch_size):
        chunk = arrays[start:start + batch_size]
        batch = tf.stack([resize_images(image, size) for image in chunk])
        probabilities = np.asarray(model.predict(batch, verbose=0), np.float32)
        for image, probability in zip(chunk, probabilities):
            restored = tf.image.resize(probability, image.shape[:2], method="bilinear")
            results.append(np.clip(restored.numpy()[..., 0], 0.0, 1.0))
    return results
