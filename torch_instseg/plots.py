"""The instance figure (study B, Figure 1), drawn from the COCO files the instance steps write.

Per validation image, one row: the micrograph; the ground truth with boxes; the Mask R-CNN
masks with boxes and scores; the SAM masks, one column per prompt mode. Drawn with
matplotlib's Agg canvas (no pyplot, no global backend switch); PNG and PDF.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import InstsegError
from .names import METHOD_LABELS



def _colours(count: int, seed: int = 0) -> np.ndarray:
    """count x 3 distinct-looking RGB colours in [0, 1]."""
    import matplotlib

    rng = np.random.default_rng(seed)
    hues = (np.arange(count) * 0.618033988749895 + rng.uniform()) % 1.0
    hsv = np.stack([hues, np.full(count, 0.85), np.full(count, 0.95)], axis=1)
    return matplotlib.colors.hsv_to_rgb(hsv) if count else np.zeros((0, 3))


def overlay(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.45) -> np.ndarray:
    """H x W x 3 float image with each H x W mask tinted in its own colour (later masks on top)."""
    grey = np.asarray(image, np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2)
    out = grey.copy()
    for mask, colour in zip(masks, _colours(len(masks))):
        mask = np.asarray(mask, bool)
        out[mask] = (1.0 - alpha) * out[mask] + alpha * colour
    return np.clip(out, 0.0, 1.0)


def _draw_boxes(axis, boxes_xywh: Sequence[Sequence[float]], scores: Sequence[float] | None = None, colour: str = "yellow") -> None:
    from matplotlib.patches import Rectangle

    for k, (x, y, w, h) in enumerate(boxes_xywh):
        axis.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=colour, linewidth=0.6))
        if scores is not None:
            axis.text(x - 0.5, y - 1.5, f"{scores[k]:.2f}", color=colour, fontsize=4, va="bottom", ha="left")


def _method_title(method: str, meta: Mapping) -> str:
    title = METHOD_LABELS.get(method, method)
    if meta.get("untrained"):
        title += "\n(UNTRAINED: random weights)"
    elif meta.get("variant"):
        title += f" ({meta['variant']})"
    return title


def instance_figure(
    samples: Sequence,
    gt: dict | str | Path,
    results_by_method: Mapping[str, str | Path],
    out_stem: str | Path,
    n_images: int = 3,
    display_threshold: float = 0.5,
    dpi: int = 200,
) -> list[Path]:
    """Draw the instance figure for the first ``n_images`` samples found in ``gt``.

    samples: ``data.Sample`` objects (validation images); gt: COCO ground truth (dict or path);
    results_by_method: method name ("maskrcnn", "sam_box", ...) -> COCO results path, one
    column each in the given order. Detections scoring below ``display_threshold`` are not
    drawn (the title says how many are). Writes ``<out_stem>.png`` and ``.pdf``; returns both.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from . import coco

    if n_images < 1:
        raise InstsegError(f"n_images must be at least 1, got {n_images}")
    gt_obj = gt if isinstance(gt, dict) else coco.load_coco(gt)
    ids = coco.image_id_by_name(gt_obj)
    chosen = [sample for sample in samples if sample.name in ids][:n_images]
    if not chosen:
        raise InstsegError("none of the samples is in the ground truth; nothing to draw")
    methods = list(results_by_method)
    results = {method: coco.load_results(results_by_method[method], gt_obj) for method in methods}
    metas = {method: coco.results_meta(results_by_method[method]) for method in methods}
    truth_by_image: dict[int, list[dict]] = {}
    for annotation in gt_obj["annotations"]:
        truth_by_image.setdefault(int(annotation["image_id"]), []).append(annotation)

    columns = 2 + len(methods)
    figure = Figure(figsize=(2.2 * columns, 2.3 * len(chosen) + 0.4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(chosen), columns, squeeze=False)
    for row, sample in enumerate(chosen):
        image_id = ids[sample.name]
        image = np.clip(sample.image, 0.0, 1.0)
        axes[row, 0].imshow(image, interpolation="nearest")
        axes[row, 0].set_title(f"{sample.name}", fontsize=6)
        truth = truth_by_image.get(image_id, [])
        truth_masks = [coco.decode_rle(a["segmentation"]) for a in truth]
        axes[row, 1].imshow(overlay(image, truth_masks), interpolation="nearest")
        _draw_boxes(axes[row, 1], [a.get("bbox") or coco.rle_to_bbox(a["segmentation"]) for a in truth], colour="white")
        axes[row, 1].set_title(f"ground truth ({len(truth)} cells)", fontsize=6)
        for column, method in enumerate(methods, start=2):
            detections = [d for d in results[method] if int(d["image_id"]) == image_id]
            shown = sorted((d for d in detections if d["score"] >= display_threshold), key=lambda d: d["score"])
            masks = [coco.decode_rle(d["segmentation"]) for d in shown]
            axis = axes[row, column]
            axis.imshow(overlay(image, masks), interpolation="nearest")
            if method == "maskrcnn":
                _draw_boxes(axis, [d.get("bbox") or coco.rle_to_bbox(d["segmentation"]) for d in shown], [d["score"] for d in shown])
            header = _method_title(method, metas[method]) if row == 0 else METHOD_LABELS.get(method, method)
            axis.set_title(f"{header}\n{len(shown)} of {len(detections)} with score >= {display_threshold:g}", fontsize=6)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".pdf"):
        path = out_stem.with_name(out_stem.name + suffix)
        partial = path.with_name(path.stem + ".partial" + suffix)
        figure.savefig(partial, dpi=dpi)
        partial.replace(path)
        written.append(path)
    return written
