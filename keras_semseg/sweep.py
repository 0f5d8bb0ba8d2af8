"""Threshold sweep of the semantic study: Dice, Jaccard and pixel accuracy per image and threshold.

numpy + pandas only (no TensorFlow, no torch): ``python -m keras_semseg.sweep`` runs
without either framework installed.

Inputs
    --probs DIR   one ``<stem>.npy`` per image: H x W float probability map in [0, 1]
    --masks DIR   one ``<stem>.png`` / ``<stem>.tif`` per image: binary (0/1, 0/255) or
                  instance labels; a pixel is cell when its value is > 0

A pixel is predicted cell at threshold t when ``prob > t`` (strictly), evaluated in the
map's own floating dtype, exactly as NumPy 1.x evaluates ``prob > t`` for a scalar t:
a float32 map value equal to float32(0.29) is *not* cell at t = 0.29. Thresholds run
0.00, 0.01, ..., 1.00 (101 values).

Outputs (in --out)
    per_image.csv  model,image,threshold,dice,jaccard,pixel_accuracy   (one row per image x threshold)
    summary.csv    model,threshold,<metric>_mean,<metric>_std           (over images, sd with ddof=1)
    optimal.csv    model,metric,threshold,mean,std   (highest mean; the lowest threshold among exact ties)
    table1.csv     model,<metric>_mean,<metric>_std,...,threshold       (at each model's Dice-optimal threshold)

Combining models: run once per model with the same --out. Rows of the other models in
per_image.csv are kept; a model not yet there is added. Rerunning a model that is
already there needs --overwrite and then replaces that model's rows only. summary.csv,
optimal.csv and table1.csv are always recomputed from the combined per_image.csv.
Every map and mask is read and checked before anything is written; the four files are
written beside their targets and moved into place together, so a failure leaves the
previous four exactly as they were.

Dice = 2TP / (2TP + FP + FN), Jaccard = TP / (TP + FP + FN), PA = (TP + TN) / all pixels;
when truth and prediction are both empty, Dice = Jaccard = 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from data.errors import DatasetError
from data.cli import make_parser, run_cli
from data.imageio import mask_to_bool, read_array
from data.outputs import check_can_write, check_output_folder, staged_outputs, write_csv

from .errors import SemsegError

THRESHOLDS = np.arange(101) / 100.0
METRIC_LABELS = {"dice": "Dice (DC)", "jaccard": "Jaccard (JI)", "pixel_accuracy": "Pixel accuracy (PA)"}
METRIC_SHORT = {"dice": "DC", "jaccard": "JI", "pixel_accuracy": "PA"}
METRICS = tuple(METRIC_LABELS)
MASK_SUFFIXES = (".png", ".tif", ".tiff")
OUTPUT_NAMES = ("per_image", "summary", "optimal", "table1")
PER_IMAGE_COLUMNS = ["model", "image", "threshold", *METRICS]
SUMMARY_COLUMNS = ["model", "threshold"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
OPTIMAL_COLUMNS = ["model", "metric", "threshold", "mean", "std"]
TABLE1_COLUMNS = ["model"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")] + ["threshold"]
BLOCK_PIXELS = 1 << 16


# ---------------------------------------------------------------- counts and metrics

def _even_grid(cast: np.ndarray, work_dtype: type) -> tuple[float, float] | None:
    """(scale, shift) of the linear guess ``g = floor(prob * scale + shift)`` when it is safe.

    ``cast``: the ascending thresholds in the map's dtype. With d the largest distance of a
    threshold from an even grid and e a bound on the rounding error of the guess (both in
    grid steps), ``g`` counts every threshold below prob and at most one more when
    2 (d + e) < 1; ``None`` otherwise (the caller then uses ``searchsorted``).
    """
    n = cast.size
    if n < 2:
        return None
    values = cast.astype(np.float64)
    start = values[0]
    step = (values[-1] - start) / (n - 1)
    if not step > 0:
        return None
    deviation = float(np.max(np.abs(values - (start + step * np.arange(n))))) / step
    magnitude = max(abs(start), abs(values[-1])) / step + 2 * n + 4
    rounding = 16 * float(np.finfo(work_dtype).eps) * magnitude
    margin = deviation + rounding + 1e-3
    if margin >= 0.45:
        return None
    return 1.0 / step, 1.0 + margin - start / step


def value_range(prob: np.ndarray) -> tuple[float, float]:
    """(min, max) of a float map; NaN when it holds NaN. float16 maps of non-negative finite values are read through
    their bit patterns (unsigned order = value order there), several times faster than float16 ``min``/``max``."""
    if prob.dtype == np.float16 and prob.size:
        bits = prob.view(np.uint16)
        top = bits.max()
        if top < 0x7C00:
            return float(bits.min().view(np.float16)), float(top.view(np.float16))
    return (prob.min(), prob.max()) if prob.size else (0.0, 0.0)


def confusion_counts(
    prob: np.ndarray, truth: np.ndarray, thresholds: Sequence[float] | np.ndarray = THRESHOLDS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN, TN (int64, one per threshold) of ``prob > t`` against ``truth``, in one pass.

    prob: H x W float map, compared with each t in its own dtype (as ``prob > t`` does);
    truth: H x W bool (cell = True). Each pixel is binned once by c = how many thresholds
    lie strictly below it; it is predicted cell at the k-th (ascending) threshold exactly
    when k < c. On an even grid c is guessed linearly, never too low and at most one too
    high, and made exact by one comparison with the threshold below the guess; otherwise
    ``searchsorted``. A ``bincount`` per block of pixels over (c, cell or background), then
    reverse cumulative sums, give the counts. Memory: O(block), independent of the number
    of thresholds.
    """
    prob = np.asarray(prob)
    truth = np.asarray(truth)
    if prob.shape != truth.shape:
        raise SemsegError(f"probability map shape {prob.shape} differs from mask shape {truth.shape}")
    if not np.issubdtype(prob.dtype, np.floating):
        prob = prob.astype(np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64).ravel()
    if thresholds.size == 0 or not np.all(np.isfinite(thresholds)):
        raise SemsegError("thresholds must be a non-empty list of finite numbers")
    low, high = value_range(prob)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise SemsegError("probability map contains NaN or infinite values")

    order = np.argsort(thresholds, kind="stable")
    cast = thresholds[order].astype(prob.dtype)
    n = cast.size
    bins_total = 2 * (n + 1)
    if prob.dtype == np.float16:
        background, cell = _float16_histograms(prob, truth, cast)
        return _counts_from_histograms(background, cell, order)
    work_dtype = np.float32 if prob.dtype.itemsize <= 4 else np.float64
    grid = _even_grid(cast, work_dtype)
    if grid is None and work_dtype is np.float32:
        work_dtype = np.float64
        grid = _even_grid(cast, work_dtype)
    if grid is not None:
        scale, shift = work_dtype(grid[0]), work_dtype(grid[1])
        clip = bool(low < cast[0] or high > cast[-1])
        # below[g] is the highest threshold counted in the guess g; tiled for cell pixels (offset n + 1).
        below = np.tile(np.concatenate([np.array([-np.inf], cast.dtype), cast]), 2)
        cell_offset = work_dtype(n + 1)

    histogram = np.zeros(bins_total, np.int64)
    flat_prob = prob.reshape(-1)
    flat_truth = truth.reshape(-1).astype(bool, copy=False).view(np.uint8)
    for begin in range(0, flat_prob.size, BLOCK_PIXELS):
        part = flat_prob[begin:begin + BLOCK_PIXELS]
        is_cell = flat_truth[begin:begin + BLOCK_PIXELS]
        if grid is None:
            keys = np.searchsorted(cast, part, side="left")
            keys += np.multiply(is_cell, n + 1, dtype=np.intp)
            histogram += np.bincount(keys, minlength=bins_total)
            continue
        guess = np.multiply(part, scale, dtype=work_dtype)
        guess += shift
        if clip:
            np.clip(guess, 0, n, out=guess)
        guess += np.multiply(is_cell, cell_offset, dtype=work_dtype)
        keys = guess.astype(np.intp)
        keys -= np.take(below, keys, mode="clip") >= part
        histogram += np.bincount(keys, minlength=bins_total)
    return _counts_from_histograms(histogram[: n + 1], histogram[n + 1:], order)


def _counts_from_histograms(background: np.ndarray, cell: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, ...]:
    """TP, FP, FN, TN per threshold (in the caller's order) from pixel counts by c = thresholds strictly below."""
    n = order.size
    tp = np.empty(n, np.int64)
    fp = np.empty(n, np.int64)
    tp[order] = np.cumsum(cell[::-1])[::-1][1:]
    fp[order] = np.cumsum(background[::-1])[::-1][1:]
    fn = cell.sum() - tp
    tn = background.sum() - fp
    return tp, fp, fn, tn


def _float16_histograms(prob: np.ndarray, truth: np.ndarray, cast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts by c (thresholds strictly below the value), background and cell, of a float16 map.

    A float16 has 65536 bit patterns: pixels are counted per (bit pattern, cell or not)
    in one ``bincount``, and each pattern's c is found once with ``searchsorted``, exact.
    """
    patterns = 1 << 16
    histogram = np.zeros(2 * patterns, np.int64)
    flat_bits = prob.reshape(-1).view(np.uint16)
    flat_truth = truth.reshape(-1).astype(bool, copy=False).view(np.uint8)
    block = 4 * BLOCK_PIXELS
    for begin in range(0, flat_bits.size, block):
        keys = flat_bits[begin:begin + block].astype(np.int32)
        keys |= flat_truth[begin:begin + block].astype(np.int32) << 16
        histogram += np.bincount(keys, minlength=2 * patterns)
    below = np.searchsorted(cast, np.arange(patterns, dtype=np.uint16).view(np.float16), side="left")
    n_bins = cast.size + 1
    background = np.bincount(below, weights=histogram[:patterns], minlength=n_bins).astype(np.int64)
    cell = np.bincount(below, weights=histogram[patterns:], minlength=n_bins).astype(np.int64)
    return background, cell


def metrics_from_counts(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """Dice, Jaccard and pixel accuracy (float64 arrays) from confusion counts.

    Empty truth and empty prediction (TP + FP + FN = 0) give Dice = Jaccard = 1.
    """
    tp, fp, fn, tn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn, tn))
    union = tp + fp + fn
    empty = union == 0
    safe = np.where(empty, 1.0, union)
    dice = np.where(empty, 1.0, 2 * tp / (safe + tp))
    jaccard = np.where(empty, 1.0, tp / safe)
    total = union + tn
    with np.errstate(invalid="ignore", divide="ignore"):
        pixel_accuracy = np.where(total > 0, (tp + tn) / np.where(total > 0, total, 1.0), np.nan)
    return {"dice": dice, "jaccard": jaccard, "pixel_accuracy": pixel_accuracy}


# ---------------------------------------------------------------- reading and checking inputs

def _stems(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise SemsegError(f"{folder}: {what} folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise SemsegError(f"{folder}: two {what} files for image '{path.stem}': {found[path.stem].name}, {path.name}")
        found[path.stem] = path
    if not found:
        raise SemsegError(f"{folder}: no {what} files ({', '.join('*' + s for s in suffixes)})")
    return found


def _pair_files(probs_dir: Path, masks_dir: Path, images: Sequence[str] | None) -> list[tuple[str, Path, Path]]:
    maps = _stems(probs_dir, (".npy",), "probability map")
    masks = _stems(masks_dir, MASK_SUFFIXES, "mask")
    if images is not None:
        wanted = list(dict.fromkeys(images))
        no_map = [s for s in wanted if s not in maps]
        no_mask = [s for s in wanted if s not in masks]
    else:
        wanted = sorted(maps)
        no_map = sorted(set(masks) - set(maps))
        no_mask = sorted(set(maps) - set(masks))
    problems = []
    if no_mask:
        problems.append(f"{masks_dir}: no mask for {len(no_mask)} map(s): {', '.join(no_mask)}")
    if no_map:
        problems.append(f"{probs_dir}: no probability map for {len(no_map)} image(s): {', '.join(no_map)}")
    if problems:
        raise SemsegError("; ".join(problems) + " (stems must match; nothing was written)")
    if not wanted:
        raise SemsegError(f"{probs_dir}: no images to evaluate")
    return [(stem, maps[stem], masks[stem]) for stem in sorted(wanted)]


def load_probability_map(path: Path) -> np.ndarray:
    """H x W float map from ``<stem>.npy``; raises ``SemsegError`` unless it is 2-D, finite and in [0, 1]."""
    try:
        prob = np.load(path, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - any loader failure is bad input
        raise SemsegError(f"{path}: cannot read probability map ({type(error).__name__}: {error})") from None
    if prob.ndim != 2:
        raise SemsegError(f"{path}: probability map must be H x W, got shape {prob.shape}")
    if prob.dtype == np.bool_ or np.issubdtype(prob.dtype, np.integer):
        prob = prob.astype(np.float64)
    if not np.issubdtype(prob.dtype, np.floating):
        raise SemsegError(f"{path}: probability map has dtype {prob.dtype}; expected floats in [0, 1]")
    if prob.size == 0:
        raise SemsegError(f"{path}: probability map has no pixels")
    low, high = value_range(prob)
    if np.isnan(low) or np.isnan(high):
        raise SemsegError(f"{path}: probability map contains NaN")
    if low < 0 or high > 1:
        raise SemsegError(f"{path}: probability map values outside 0..1 (min {float(low):g}, max {float(high):g})")
    return prob


def load_truth(path: Path) -> np.ndarray:
    """H x W bool cell mask (> 0) from a binary or instance-label mask file (read as booleans, never labelled)."""
    try:
        return mask_to_bool(read_array(path), path)
    except DatasetError as error:
        raise SemsegError(str(error)) from None


# ---------------------------------------------------------------- sweep and summary

def sweep_model(
    probs_dir: str | Path,
    masks_dir: str | Path,
    model: str,
    images: Sequence[str] | None = None,
) -> pd.DataFrame:
    """per_image table (model, image, threshold, dice, jaccard, pixel_accuracy) of one model.

    ``images``: restrict to these stems (each must have a map and a mask); by default the
    map and mask stems must match exactly. Raises ``SemsegError`` naming the file on bad input.
    """
    if not str(model).strip():
        raise SemsegError("model name is empty")
    pairs = _pair_files(Path(probs_dir), Path(masks_dir), images)
    frames = []
    for stem, map_path, mask_path in pairs:
        prob = load_probability_map(map_path)
        truth = load_truth(mask_path)
        if prob.shape != truth.shape:
            raise SemsegError(f"{map_path}: probability map shape {prob.shape} differs from mask {mask_path} shape {truth.shape}")
        scores = metrics_from_counts(*confusion_counts(prob, truth, THRESHOLDS))
        frames.append(pd.DataFrame({"model": model, "image": stem, "threshold": THRESHOLDS, **scores}))
    return pd.concat(frames, ignore_index=True)[PER_IMAGE_COLUMNS]


def _check_per_image(per_image: pd.DataFrame, source: str = "per_image") -> pd.DataFrame:
    missing = [c for c in PER_IMAGE_COLUMNS if c not in per_image.columns]
    if missing:
        raise SemsegError(f"{source}: missing column(s) {', '.join(missing)}; expected {','.join(PER_IMAGE_COLUMNS)}")
    if per_image.empty:
        raise SemsegError(f"{source}: no rows")
    frame = per_image[PER_IMAGE_COLUMNS].copy()
    frame["model"] = frame["model"].astype(str)
    frame["image"] = frame["image"].astype(str)
    frame["threshold"] = np.round(frame["threshold"].astype(np.float64), 2)
    return frame


def summarize(per_image: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(summary, optimal, table1) from a per_image table of one or more models.

    summary: mean and sample sd (ddof=1) over images per model and threshold.
    optimal: per model and metric, the threshold of the highest mean (lowest threshold among exact ties).
    table1:  per model, every metric's mean and sd at the Dice-optimal threshold.
    """
    frame = _check_per_image(per_image)
    grouped = frame.groupby(["model", "threshold"], sort=False)[list(METRICS)]
    means = grouped.mean()
    stds = grouped.std(ddof=1)
    summary = pd.DataFrame(index=means.index)
    for metric in METRICS:
        summary[f"{metric}_mean"] = means[metric]
        summary[f"{metric}_std"] = stds[metric]
    models = list(dict.fromkeys(frame["model"]))
    summary = summary.reset_index()
    summary["model"] = pd.Categorical(summary["model"], categories=models, ordered=True)
    summary = summary.sort_values(["model", "threshold"], kind="stable").reset_index(drop=True)
    summary["model"] = summary["model"].astype(str)
    summary = summary[SUMMARY_COLUMNS]

    optimal_rows, table_rows = [], []
    for model in models:
        rows = summary[summary["model"] == model]
        best: dict[str, float] = {}
        for metric in METRICS:
            values = rows[f"{metric}_mean"].to_numpy()
            if np.all(np.isnan(values)):
                raise SemsegError(f"per_image: model '{model}' has no valid {metric} values")
            position = int(np.nanargmax(values))  # first maximum = lowest threshold among ties
            row = rows.iloc[position]
            best[metric] = float(row["threshold"])
            optimal_rows.append({"model": model, "metric": metric, "threshold": row["threshold"],
                                 "mean": row[f"{metric}_mean"], "std": row[f"{metric}_std"]})
        at_dice = rows[rows["threshold"] == best["dice"]].iloc[0]
        table_rows.append({"model": model, **{c: at_dice[c] for c in TABLE1_COLUMNS[1:-1]}, "threshold": best["dice"]})
    optimal = pd.DataFrame(optimal_rows, columns=OPTIMAL_COLUMNS)
    table1 = pd.DataFrame(table_rows, columns=TABLE1_COLUMNS)
    return summary, optimal, table1


def _formatted(frame: pd.DataFrame) -> pd.DataFrame:
    """Thresholds as two-decimal text; other floats keep full (round-trip) precision."""
    frame = frame.copy()
    frame["threshold"] = [f"{t:.2f}" for t in frame["threshold"].astype(np.float64)]
    return frame


def read_per_image(path: str | Path) -> pd.DataFrame:
    """A per_image.csv as written by ``run_sweep`` (floats read back exactly)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, float_precision="round_trip", dtype={"model": str, "image": str})
    except FileNotFoundError:
        raise SemsegError(f"{path}: file not found") from None
    except Exception as error:  # noqa: BLE001 - unreadable table is bad input
        raise SemsegError(f"{path}: cannot read CSV ({type(error).__name__}: {error})") from None
    return _check_per_image(frame, str(path))


def run_sweep(
    probs_dir: str | Path,
    masks_dir: str | Path,
    model: str,
    out_dir: str | Path,
    overwrite: bool = False,
    images: Sequence[str] | None = None,
) -> dict[str, pd.DataFrame]:
    """Sweep one model and write per_image/summary/optimal/table1 CSVs into ``out_dir``.

    Rows of other models already in ``out_dir/per_image.csv`` are kept; this model's rows
    are added, or replaced when ``overwrite`` (an error otherwise). Everything is
    validated before anything is written. Returns the four (combined) tables by name.
    """
    out_dir = check_output_folder(out_dir)
    new_rows = sweep_model(probs_dir, masks_dir, model, images=images)
    per_image_path = out_dir / "per_image.csv"
    if per_image_path.is_file():
        existing = read_per_image(per_image_path)
        if (existing["model"] == model).any() and not overwrite:
            raise SemsegError(f"{per_image_path}: model '{model}' is already there; pass --overwrite to replace its rows (nothing was written)")
        parts = []
        for name in dict.fromkeys(existing["model"]):
            parts.append(new_rows if name == model else existing[existing["model"] == name])
        if model not in set(existing["model"]):
            parts.append(new_rows)
        combined = pd.concat(parts, ignore_index=True)
    else:
        for name in OUTPUT_NAMES[1:]:
            check_can_write(out_dir / f"{name}.csv", overwrite)
        combined = new_rows
    summary, optimal, table1 = summarize(combined)
    tables = {"per_image": combined, "summary": summary, "optimal": optimal, "table1": table1}
    with staged_outputs(out_dir) as stage:
        for name in OUTPUT_NAMES:
            write_csv(stage / f"{name}.csv", _formatted(tables[name]))
    return tables


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "semseg-sweep",
        description="Threshold sweep (0.00..1.00, step 0.01) of one model's probability maps: "
        "Dice, Jaccard and pixel accuracy per image, mean +- sd, optimal thresholds and Table 1.",
        epilog="Combining models: run once per model with the same --out. Rows of other models in "
        "per_image.csv are kept; rerunning a model already there needs --overwrite and replaces "
        "only that model's rows. summary.csv, optimal.csv and table1.csv are recomputed from the "
        "combined per_image.csv.",
    )
    parser.add_argument("--probs", required=True, type=Path, help="folder of <stem>.npy maps (H x W floats in 0..1)")
    parser.add_argument("--masks", required=True, type=Path,
                        help="folder of <stem>.png/.tif masks: binary (0/1 or 0/255) or instance labels (>0 is cell)")
    parser.add_argument("--model", required=True, help="model name written in the 'model' column")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: per_image.csv, summary.csv, optimal.csv, table1.csv")
    parser.add_argument("--overwrite", action="store_true", help="replace this model's rows if already in --out")
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tables = run_sweep(args.probs, args.masks, args.model, args.out, overwrite=args.overwrite)
    row = tables["table1"].set_index("model").loc[args.model]
    n_images = tables["per_image"].loc[tables["per_image"]["model"] == args.model, "image"].nunique()
    print(
        f"{args.model}: {n_images} images; at Dice-optimal threshold {row['threshold']:.2f}: "
        f"DC {row['dice_mean']:.3f} +- {row['dice_std']:.3f}, JI {row['jaccard_mean']:.3f} +- {row['jaccard_std']:.3f}, "
        f"PA {row['pixel_accuracy_mean']:.3f} +- {row['pixel_accuracy_std']:.3f}; wrote {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
