"""Figure of Mask R-CNN instances: per image, the ground truth and the detections
(coloured masks, boxes, scores). Written as ``<out_stem>.png`` and ``<out_stem>.pdf``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import SemsegError

DPI = 150


def _colours(count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct-looking RGB colours in [0, 1]."""
    from matplotlib import colormaps

    palette = colormaps["tab20"](np.arange(20))[:, :3]
    return palette[np.random.default_rng(seed).permutation(20)][np.arange(count) % 20]


def _overlay(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.45) -> np.ndarray:
    """RGB image with each boolean mask H x W tinted in its own colour."""
    grey = image.astype(np.float32)
    if grey.ndim == 2:
        grey = np.repeat(grey[..., None], 3, axis=-1)
    out = grey.copy()
    for mask, colour in zip(masks, _colours(len(masks))):
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return np.clip(out, 0.0, 1.0)


def plot_instances(samples: Sequence, detections: Sequence[dict], out_stem: str | Path, *,
                   min_score: float = 0.5, mask_threshold: float = 0.5, max_images: int = 3,
                   overwrite: bool = True) -> list[Path]:
    """Draw up to ``max_images`` samples (``data.Sample``: image, labels, name) with their
    ``detections`` (``model.detect`` dicts: boxes K x 4 y1, x1, y2, x2 pixels, scores K,
    masks K x H x W probabilities). Top row: ground truth; bottom row: the detections with
    score >= ``min_score``: masks (probability > ``mask_threshold``), boxes and scores.
    Returns the PNG and PDF paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from data.outputs import check_can_write, partial_path

    if len(samples) != len(detections):
        raise SemsegError(f"plot_instances: {len(samples)} samples but {len(detections)} detection results")
    count = min(len(samples), max_images)
    if count == 0:
        raise SemsegError("plot_instances: no samples to draw")
    out_stem = Path(out_stem)
    targets = [out_stem.with_name(out_stem.name + suffix) for suffix in (".png", ".pdf")]
    for target in targets:
        check_can_write(target, overwrite)

    figure = Figure(figsize=(3.2 * count, 6.6), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, count, squeeze=False)
    for column, (sample, found) in enumerate(zip(samples[:count], detections[:count])):
        ids = [i for i in np.unique(sample.labels) if i > 0]
        truth_axes, predicted_axes = axes[0, column], axes[1, column]
        truth_axes.imshow(_overlay(sample.image, [sample.labels == i for i in ids]), interpolation="nearest")
        truth_axes.set_title(f"{sample.name}\nground truth: {len(ids)} cells", fontsize=8)
        shown = np.asarray(found["scores"]) >= min_score
        masks = [mask > mask_threshold for mask in np.asarray(found["masks"])[shown]]
        predicted_axes.imshow(_overlay(sample.image, masks), interpolation="nearest")
        for (y1, x1, y2, x2), score, colour in zip(np.asarray(found["boxes"])[shown], np.asarray(found["scores"])[shown],
                                                   _colours(len(masks))):
            predicted_axes.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=0.8))
            predicted_axes.text(x1 - 0.5, y1 - 1.0, f"{score:.2f}", color="white", fontsize=5,
                                bbox={"facecolor": colour, "alpha": 0.8, "pad": 0.5, "linewidth": 0})
        predicted_axes.set_title(f"Mask R-CNN: {len(masks)} detections with score >= {min_score:g}\n"
                                 f"({len(shown)} >= the model's score threshold)", fontsize=8)
        for ax in (truth_axes, predicted_axes):
            ax.set_axis_off()
    figure.tight_layout()
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_path(target)
        figure.savefig(partial, format=target.suffix[1:], bbox_inches="tight")
        os.replace(partial, target)
    return targets
