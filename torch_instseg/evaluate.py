"""Instance-segmentation mAP of COCO results against COCO ground truth, numpy only.

One matcher, two interpolations, and a visible cap on detections per image.

Matching (COCO semantics, as pycocotools COCOeval with iouType "segm", area range
"all"): per image and category, detections are sorted by descending score (stable, so
ties keep their order in the results list) and the ``max_dets`` highest are kept. At
each IoU threshold t in 0.50:0.05:0.95, each detection in turn takes the not yet
matched ground-truth mask of highest mask IoU >= t (a tie goes to the later ground
truth, as in COCOeval); a detection with no such match is a false positive. Crowd
ground truth (``iscrowd`` 1) is handled as COCOeval does: its IoU is
intersection / detection area, it may absorb any number of detections, a detection
matched to it is ignored (neither TP nor FP), and it never counts as a missed cell.

AP (per IoU threshold, over all images jointly, per category, as COCOeval
``accumulate``): detections of every image are pooled and ranked by score (stable
in image-id order), precision = TP / (TP + FP), recall = TP / number of ground-truth
cells; the precision envelope (max precision at recall >= r) is sampled at the
recall points r and averaged:

- ``--interpolation 11`` (default; the paper's convention): r = ``np.linspace(0, 1, 11)``,
  11-point interpolated AP, averaged over the ten IoU thresholds, sampled as COCOeval
  samples its own points. This equals pycocotools with ``params.recThrs =
  np.linspace(0, 1, 11)`` (to 1e-12, tested). Those points, like the VOC devkit's
  ``np.arange(0, 1.1, 0.1)``, are 0.30000000000000004, 0.6000000000000001 and
  0.7000000000000001 rather than exact tenths, so where recall lands exactly on 0.3,
  0.6 or 0.7 the point takes the precision just after it, as those tools do.
- ``--interpolation 101``: COCO's 101 recall points 0, 0.01, ..., 1.00 sampled exactly
  as COCOeval (``np.searchsorted(recall, r, side="left")`` into the envelope; 0 past
  the highest recall reached). With ``--max-dets 100`` mAP equals COCOeval's
  ``stats[0]`` (AP50 ``stats[1]``, AP75 ``stats[2]``).

mAP is the mean over IoU thresholds (and categories that have ground truth).

Detections cap (``--max-dets``): COCOeval keeps only the 100 highest-scoring
detections per image. Dense micrographs hold 40+ cells each, and a detector run with
a low score threshold returns several times that many candidates, so a cap of 100
can silently drop true positives ranked below false positives; raise the cap (for
example 300) for dense data. The cap used is written into every output, and when it
dropped detections, summary.json says how many (``n_pred_dropped_by_cap``) in how many
images (``n_images_capped``) and the command prints one warning line.

Per-image AP (``per_image``, ``per_image.csv``): each image's own mAP@[.50:.95] with
the same interpolation and cap. An image with ground truth and no predictions has
AP 0; an image with no ground-truth cells has AP NaN (recall is undefined there),
whether or not it has predictions. ``n_pred`` and ``mean_score`` describe all the
predictions in the results for the image, before the cap.

Command line::

    python -m torch_instseg.evaluate --gt GT.json --pred RESULTS.json \\
        --interpolation {11,101} --max-dets N --out DIR [--overwrite]

writes ``DIR/summary.json`` and ``DIR/per_image.csv``. Bad input prints one line
``error: <file>: <problem>`` and exits with status 2.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from data.cli import make_parser, run_cli
from data.coco_codec import counts_to_pixels
from data.outputs import check_can_write, check_output_folder, staged_outputs, write_csv, write_json

from .coco import IN_MEMORY_GT, GroundTruth, Instance, index_ground_truth, index_results, results_meta
from .errors import InstsegError
from .names import INTERPOLATIONS

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
COCO_RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
ELEVEN_RECALL_POINTS = np.linspace(0.0, 1.0, 11)
DEFAULT_MAX_DETS = 100
PER_IMAGE_COLUMNS = ["image_id", "n_gt", "n_pred", "mean_score", "ap", "image"]
TABLE_COLUMNS = [
    "method", "interpolation", "max_dets", "n_images", "cells_per_image", "detections_per_image",
    "mean_confidence", "mAP", "AP50", "AP75",
]
CONVENTIONS = {
    11: "11-point interpolated AP (recall np.linspace(0, 1, 11), as pycocotools with recThrs set to it), mean over IoU 0.50:0.05:0.95, images pooled per category",
    101: "COCO 101-point AP (COCOeval recall points and sampling), mean over IoU 0.50:0.05:0.95, images pooled per category",
}


def recall_points(interpolation: int) -> np.ndarray:
    """The recall values at which the precision envelope is sampled (11 or 101 of them)."""
    return ELEVEN_RECALL_POINTS if check_interpolation(interpolation) == 11 else COCO_RECALL_POINTS


def check_interpolation(interpolation: int | str) -> int:
    try:
        value = int(interpolation)
    except (TypeError, ValueError):
        value = None
    if value not in INTERPOLATIONS:
        raise InstsegError(f"interpolation must be 11 (the paper's 11-point AP) or 101 (COCOeval), got {interpolation!r}")
    return value


def check_max_dets(max_dets: int | None) -> int | None:
    """A positive int, or None for no cap."""
    if max_dets is None:
        return None
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 1:
        raise InstsegError(f"max_dets must be a positive integer (or None for no cap), got {max_dets!r}")
    return int(max_dets)


def _check_thresholds(iou_thresholds: Sequence[float] | None) -> np.ndarray:
    if iou_thresholds is None:
        return COCO_IOU_THRESHOLDS
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 0 or not np.all((thresholds >= 0) & (thresholds <= 1)):
        raise InstsegError("iou_thresholds must be one or more values in [0, 1]")
    return thresholds


# ---------------------------------------------------------------- IoU and matching

def mask_ious(det_counts: Sequence[np.ndarray], gt_counts: Sequence[np.ndarray], gt_crowd: np.ndarray, n_pixels: int) -> np.ndarray:
    """D x G mask IoU of one image from RLE counts (column-major, background first).

    Intersections are counted pixel by pixel of the detections against label maps of
    the ground truth (one map per layer of overlapping ground truth), so the cost grows
    with the mask areas, not with D x G x H x W. Crowd columns hold
    intersection / detection area, as COCOeval.
    """
    n_det, n_gt = len(det_counts), len(gt_counts)
    if n_det == 0 or n_gt == 0:
        return np.zeros((n_det, n_gt))
    det_pixels, det_owner = counts_to_pixels(det_counts)
    gt_pixels, gt_owner = counts_to_pixels(gt_counts)
    det_area = np.bincount(det_owner, minlength=n_det)
    gt_area = np.bincount(gt_owner, minlength=n_gt)
    layers = _label_layers(gt_pixels, gt_owner, n_pixels)
    intersection = np.zeros(n_det * n_gt, dtype=np.int64)
    for layer in layers:
        hit = layer[det_pixels]
        inside = hit >= 0
        intersection += np.bincount(det_owner[inside] * n_gt + hit[inside], minlength=n_det * n_gt)
    intersection = intersection.reshape(n_det, n_gt)
    union = det_area[:, None] + gt_area[None, :] - intersection
    denominator = np.where(np.asarray(gt_crowd, dtype=bool)[None, :], det_area[:, None], union)
    ious = np.zeros((n_det, n_gt))
    np.divide(intersection, denominator, out=ious, where=intersection > 0)
    return ious


def _label_layers(pixels: np.ndarray, owner: np.ndarray, n_pixels: int) -> list[np.ndarray]:
    """Label maps (flat, -1 = none) that together hold every mask, no two overlapping in one map."""
    single = np.full(n_pixels, -1, dtype=np.int32)
    single[pixels] = owner
    if np.count_nonzero(single >= 0) == pixels.size:
        return [single]
    depth = np.zeros(n_pixels, dtype=np.int32)
    layers: list[np.ndarray] = []
    bounds = np.r_[0, np.cumsum(np.bincount(owner))]
    for g in range(bounds.size - 1):
        mask_pixels = pixels[bounds[g]:bounds[g + 1]]
        if mask_pixels.size == 0:
            continue
        level = int(depth[mask_pixels].max())
        if level == len(layers):
            layers.append(np.full(n_pixels, -1, dtype=np.int32))
        layers[level][mask_pixels] = g
        depth[mask_pixels] = level + 1
    return layers


def greedy_match(ious: np.ndarray, gt_crowd: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's greedy matching of score-sorted detections (rows) to ground truth (columns).

    Ground truth must be ordered non-crowd first. Returns (matched, ignored), both
    T x D bool: matched to some ground truth, and matched to a crowd one.
    """
    n_det, n_gt = ious.shape
    matched = np.zeros((len(thresholds), n_det), dtype=bool)
    ignored = np.zeros((len(thresholds), n_det), dtype=bool)
    if n_det == 0 or n_gt == 0:
        return matched, ignored
    floor = min(float(np.min(thresholds)), 1 - 1e-10)
    is_candidate = ious >= floor
    n_candidates = is_candidate.sum(axis=1)
    if n_candidates.max() <= 1 and not np.any(gt_crowd):
        return _match_single_candidates(ious, n_candidates == 1, thresholds), ignored
    return _match_in_order(ious, is_candidate, gt_crowd, thresholds)


def _match_in_order(ious: np.ndarray, is_candidate: np.ndarray, gt_crowd: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's loop over thresholds and detections, visiting only candidate ground truth."""
    n_det, n_gt = ious.shape
    matched = np.zeros((len(thresholds), n_det), dtype=bool)
    ignored = np.zeros((len(thresholds), n_det), dtype=bool)
    crowd = [bool(c) for c in gt_crowd]
    candidates = []
    for d in range(n_det):
        columns = np.flatnonzero(is_candidate[d])
        candidates.append(list(zip(columns.tolist(), ious[d, columns].tolist())))
    for t_index, threshold in enumerate(thresholds):
        taken = [False] * n_gt
        start = min(float(threshold), 1 - 1e-10)
        for d in range(n_det):
            best, match = start, -1
            for g, iou in candidates[d]:
                if taken[g] and not crowd[g]:
                    continue
                if match > -1 and not crowd[match] and crowd[g]:
                    break
                if iou < best:
                    continue
                best, match = iou, g
            if match == -1:
                continue
            matched[t_index, d] = True
            ignored[t_index, d] = crowd[match]
            taken[match] = True
    return matched, ignored


def _match_single_candidates(ious: np.ndarray, has_candidate: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``greedy_match`` when each detection has at most one ground truth above the lowest
    threshold and none is crowd: the first detection (by score) reaching a ground truth takes it."""
    column = ious.argmax(axis=1)
    best = ious[np.arange(ious.shape[0]), column]
    matched = np.zeros((len(thresholds), ious.shape[0]), dtype=bool)
    for t_index, threshold in enumerate(thresholds):
        eligible = np.flatnonzero(has_candidate & (best >= min(float(threshold), 1 - 1e-10)))
        _, first = np.unique(column[eligible], return_index=True)
        matched[t_index, eligible[first]] = True
    return matched


@dataclass
class ImageEval:
    """Matching of one image and category: detections sorted by score and capped."""

    image_id: int
    category_id: int
    scores: np.ndarray       # D, descending
    matched: np.ndarray      # T x D bool
    det_ignored: np.ndarray  # T x D bool
    gt_ignored: np.ndarray   # G bool (crowd)


def evaluate_image(
    gts: Sequence[Instance], dets: Sequence[Instance], n_pixels: int,
    thresholds: np.ndarray, max_dets: int | None,
) -> ImageEval | None:
    """Match one image's detections (input order) to its ground truth; None when both are empty."""
    if not gts and not dets:
        return None
    crowd = np.array([g.iscrowd for g in gts], dtype=bool)
    gt_order = np.argsort(crowd, kind="mergesort")
    gts = [gts[i] for i in gt_order]
    crowd = crowd[gt_order]
    scores = np.array([d.score for d in dets], dtype=np.float64)
    det_order = np.argsort(-scores, kind="mergesort")[:max_dets]
    dets = [dets[i] for i in det_order]
    ious = mask_ious([d.counts for d in dets], [g.counts for g in gts], crowd, n_pixels)
    matched, ignored = greedy_match(ious, crowd, thresholds)
    image_id = (gts or dets)[0].image_id
    category_id = (gts or dets)[0].category_id
    return ImageEval(image_id, category_id, scores[det_order], matched, ignored, crowd)


def precision_at_recalls(evals: Sequence[ImageEval | None], points: np.ndarray, n_thresholds: int) -> np.ndarray | None:
    """T x R interpolated precision of pooled images (COCOeval ``accumulate``); None without ground truth."""
    evals = [e for e in evals if e is not None]
    if not evals:
        return None
    n_truth = int(sum(np.count_nonzero(~e.gt_ignored) for e in evals))
    if n_truth == 0:
        return None
    scores = np.concatenate([e.scores for e in evals])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([e.matched for e in evals], axis=1)[:, order]
    ignored = np.concatenate([e.det_ignored for e in evals], axis=1)[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    recall = tp / n_truth
    precision = tp / (fp + tp + np.spacing(1))
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    sampled = np.zeros((n_thresholds, len(points)))
    n_det = scores.size
    for t in range(n_thresholds):
        index = np.searchsorted(recall[t], points, side="left")
        reached = index < n_det
        sampled[t, reached] = envelope[t, index[reached]]
    return sampled


# ---------------------------------------------------------------- evaluation

@dataclass
class Evaluation:
    """Everything ``evaluate`` and ``per_image`` report, computed once."""

    summary: dict
    per_image_rows: list[dict]

    def per_image_frame(self):
        import pandas as pd

        return pd.DataFrame(self.per_image_rows, columns=PER_IMAGE_COLUMNS)


def _source(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, Path)) else None


def evaluate_all(
    gt: Mapping | GroundTruth | str | Path,
    results: Sequence[Mapping] | str | Path,
    interpolation: int = 11,
    max_dets: int | None = DEFAULT_MAX_DETS,
    iou_thresholds: Sequence[float] | None = None,
) -> Evaluation:
    """Summary and per-image rows of one results set (see the module docstring)."""
    interpolation = check_interpolation(interpolation)
    max_dets = check_max_dets(max_dets)
    thresholds = _check_thresholds(iou_thresholds)
    points = recall_points(interpolation)
    truth = index_ground_truth(gt)
    detections = index_results(results, truth)

    gts_by_key: dict[tuple[int, int], list[Instance]] = defaultdict(list)
    dets_by_key: dict[tuple[int, int], list[Instance]] = defaultdict(list)
    for instance in truth.instances:
        gts_by_key[instance.image_id, instance.category_id].append(instance)
    for detection in detections:
        dets_by_key[detection.image_id, detection.category_id].append(detection)

    evals: dict[tuple[int, int], ImageEval | None] = {}
    for category_id in truth.category_ids:
        for image_id, image in truth.images.items():
            key = (image_id, category_id)
            evals[key] = evaluate_image(gts_by_key.get(key, []), dets_by_key.get(key, []),
                                        image.height * image.width, thresholds, max_dets)

    per_category = [
        precision_at_recalls([evals[image_id, category_id] for image_id in truth.images], points, len(thresholds))
        for category_id in truth.category_ids
    ]
    valid = [p for p in per_category if p is not None]
    if valid:
        stacked = np.stack(valid, axis=-1)
        ap_by_threshold = stacked.mean(axis=(1, 2))
        mean_ap = float(stacked.mean())
    else:
        ap_by_threshold = np.full(len(thresholds), math.nan)
        mean_ap = math.nan

    rows = []
    dets_per_image: dict[int, list[float]] = defaultdict(list)
    for detection in detections:
        dets_per_image[detection.image_id].append(detection.score)
    for image_id, image in truth.images.items():
        image_aps = [precision_at_recalls([evals[image_id, c]], points, len(thresholds)) for c in truth.category_ids]
        image_aps = [float(p.mean()) for p in image_aps if p is not None]
        scores = dets_per_image.get(image_id, [])
        rows.append({
            "image_id": image_id,
            "n_gt": sum(not g.iscrowd for c in truth.category_ids for g in gts_by_key.get((image_id, c), [])),
            "n_pred": len(scores),
            "mean_score": float(np.mean(scores)) if scores else math.nan,
            "ap": float(np.mean(image_aps)) if image_aps else math.nan,
            "image": image.file_name,
        })

    n_images = len(truth.images)
    n_gt = sum(not g.iscrowd for g in truth.instances)
    n_evaluated = sum(e.scores.size for e in evals.values() if e is not None)
    n_dropped, n_images_capped = _dropped_by_cap(dets_by_key, truth.images, truth.category_ids, max_dets)
    image_aps = [row["ap"] for row in rows if not math.isnan(row["ap"])]
    all_scores = [d.score for d in detections]
    summary = {
        "mAP": mean_ap,
        "AP50": _ap_at(0.5, thresholds, ap_by_threshold),
        "AP75": _ap_at(0.75, thresholds, ap_by_threshold),
        "ap_per_iou": {f"{t:.2f}": float(ap) for t, ap in zip(thresholds, ap_by_threshold)},
        "interpolation": interpolation,
        "convention": CONVENTIONS[interpolation],
        "max_dets": max_dets,
        "iou_thresholds": [float(t) for t in thresholds],
        "n_images": n_images,
        "n_gt": n_gt,
        "n_gt_crowd": len(truth.instances) - n_gt,
        "n_pred": len(detections),
        "n_pred_evaluated": n_evaluated,
        "n_pred_dropped_by_cap": n_dropped,
        "n_images_capped": n_images_capped,
        "cells_per_image": n_gt / n_images if n_images else math.nan,
        "detections_per_image": len(detections) / n_images if n_images else math.nan,
        "mean_confidence": float(np.mean(all_scores)) if all_scores else math.nan,
        "mean_image_ap": float(np.mean(image_aps)) if image_aps else math.nan,
        "n_images_with_ap": len(image_aps),
        "gt": _source(gt) or (truth.source if truth.source != IN_MEMORY_GT else None),
        "pred": _source(results),
    }
    return Evaluation(summary, rows)


def _dropped_by_cap(dets_by_key: Mapping[tuple[int, int], list], image_ids: Any, category_ids: Any,
                    max_dets: int | None) -> tuple[int, int]:
    """(detections the cap left out, images where it left any out), over the evaluated images and categories."""
    if max_dets is None:
        return 0, 0
    dropped: dict[int, int] = defaultdict(int)
    for (image_id, category_id), dets in dets_by_key.items():
        if image_id in image_ids and category_id in category_ids and len(dets) > max_dets:
            dropped[image_id] += len(dets) - max_dets
    return sum(dropped.values()), len(dropped)


def cap_warning(summary: Mapping[str, Any]) -> str:
    """One warning line when the ``max_dets`` cap dropped detections ('' otherwise)."""
    dropped = summary.get("n_pred_dropped_by_cap") or 0
    if not dropped:
        return ""
    return (f"warning: the cap of {summary['max_dets']} detections per image left out {dropped} of {summary['n_pred']} "
            f"detections in {summary['n_images_capped']} of {summary['n_images']} images; they were not scored "
            "(raise --max-dets, or pass --max-dets all)")


def _ap_at(value: float, thresholds: np.ndarray, ap_by_threshold: np.ndarray) -> float:
    hits = np.flatnonzero(np.isclose(thresholds, value, rtol=0, atol=1e-9))
    return float(ap_by_threshold[hits[0]]) if hits.size else math.nan


def evaluate(
    gt: Mapping | str | Path,
    results: Sequence[Mapping] | str | Path,
    interpolation: int = 11,
    max_dets: int | None = DEFAULT_MAX_DETS,
    iou_thresholds: Sequence[float] | None = None,
) -> dict:
    """Summary dict: mAP, AP50, AP75, ap_per_iou ("0.50".."0.95"), interpolation, max_dets, counts.

    gt: COCO ground-truth dict or path; results: COCO results list or path (an empty list
    is valid and scores 0). mAP is NaN when the ground truth has no (non-crowd) cells.
    """
    return evaluate_all(gt, results, interpolation, max_dets, iou_thresholds).summary


def per_image(
    gt: Mapping | str | Path,
    results: Sequence[Mapping] | str | Path,
    interpolation: int = 11,
    max_dets: int | None = DEFAULT_MAX_DETS,
    iou_thresholds: Sequence[float] | None = None,
):
    """DataFrame, one row per ground-truth image: image_id, n_gt, n_pred, mean_score, ap, image."""
    return evaluate_all(gt, results, interpolation, max_dets, iou_thresholds).per_image_frame()


def run_evaluation(
    gt_path: str | Path,
    pred_path: str | Path,
    out_dir: str | Path,
    interpolation: int = 11,
    max_dets: int | None = DEFAULT_MAX_DETS,
    overwrite: bool = False,
) -> dict:
    """Evaluate files and write ``out_dir/summary.json`` and ``out_dir/per_image.csv``."""
    out_dir = check_output_folder(out_dir)
    check_can_write(out_dir / "summary.json", overwrite)
    check_can_write(out_dir / "per_image.csv", overwrite)
    evaluation = evaluate_all(gt_path, pred_path, interpolation, max_dets)
    summary = dict(evaluation.summary)
    meta = results_meta(pred_path)
    if "score_source" in meta:
        summary["score_source"] = meta["score_source"]
    with staged_outputs(out_dir) as stage:
        write_csv(stage / "per_image.csv", evaluation.per_image_frame())
        write_json(stage / "summary.json", _nan_to_none(summary))
    return summary


def _nan_to_none(value: Any) -> Any:
    """NaN -> null, so that summary.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return value


def instance_table(
    gt: Mapping | str | Path,
    results_by_method: Mapping[str, Sequence[Mapping] | str | Path],
    max_dets: int | None = DEFAULT_MAX_DETS,
    interpolation: int = 11,
):
    """The paper's instance table: one row per method.

    Columns: method, interpolation, max_dets, n_images, cells_per_image (annotated cells),
    detections_per_image (all detections in the results, before the cap), mean_confidence
    (mean score over all detections), mAP, AP50, AP75; plus ``score_source`` when any
    results file has a sidecar ``<name>.meta.json`` with that key.
    """
    import pandas as pd

    truth = index_ground_truth(gt)
    rows = []
    for method, results in results_by_method.items():
        summary = evaluate_all(truth, results, interpolation, max_dets).summary
        row = {column: summary.get(column) for column in TABLE_COLUMNS}
        row["method"] = method
        if isinstance(results, (str, Path)):
            meta = results_meta(results)
            if "score_source" in meta:
                row["score_source"] = meta["score_source"]
        rows.append(row)
    columns = TABLE_COLUMNS + (["score_source"] if any("score_source" in row for row in rows) else [])
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- command line

def _max_dets_arg(text: str) -> int | None:
    if text.lower() in ("all", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "instseg-evaluate",
        description=(
            "Mask mAP@[.50:.95] of COCO results (RLE masks) against COCO ground truth, numpy only. "
            "--interpolation 11: the paper's 11-point interpolated AP; --interpolation 101: COCOeval's "
            "101 recall points (equal to pycocotools stats[0] with --max-dets 100). Both pool all images per "
            "category as COCOeval does; per-image AP goes to per_image.csv. Writes OUT/summary.json and "
            "OUT/per_image.csv."
        ),
        epilog=(
            "Why the cap matters: COCOeval keeps only 100 detections per image. Dense MSC images hold 40+ "
            "cells each, and a detector with a low score threshold returns many more candidates, so a cap of "
            "100 can drop true positives; use e.g. --max-dets 300 (or 'all') for dense data. "
            "The cap is recorded in summary.json."
        ),
    )
    parser.add_argument("--gt", required=True, help="COCO ground-truth JSON (images, annotations, categories)")
    parser.add_argument("--pred", required=True, help="COCO results JSON (list of detections with RLE segmentation and score)")
    parser.add_argument("--interpolation", type=int, choices=INTERPOLATIONS, default=11,
                        help="11 = paper's 11-point AP, 101 = COCOeval (default 11)")
    parser.add_argument("--max-dets", type=_max_dets_arg, default=DEFAULT_MAX_DETS,
                        help="keep the N highest-scoring detections per image, or 'all' (default 100, as COCOeval)")
    parser.add_argument("--out", required=True, help="output folder for summary.json and per_image.csv")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = run_evaluation(args.gt, args.pred, args.out, args.interpolation, args.max_dets, args.overwrite)
    warning = cap_warning(summary)
    if warning:
        print(warning, file=sys.stderr)
    cap = "no cap" if summary["max_dets"] is None else f"max {summary['max_dets']} detections/image"
    print(
        f"mAP {summary['mAP']:.4f}  AP50 {summary['AP50']:.4f}  AP75 {summary['AP75']:.4f}  "
        f"({summary['interpolation']}-point, {cap}, {summary['n_images']} images) -> {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
