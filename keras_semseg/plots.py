"""Figures 1, 2 and 4 of the semantic study, made only from files the other steps wrote.

- ``figure1``: training curves from each model's ``history.csv``.
- ``figure2``: mean metric vs threshold (+-1 sd band, optimum marked) from ``summary.csv`` + ``optimal.csv``.
- ``figure4``: original, ground truth and each model's mask at its Dice-optimal threshold
  (``table1.csv``) from the saved probability maps ``<stem>.npy``.

Each figure is written as ``<out_stem>.png`` and ``<out_stem>.pdf`` (atomically). Figures use
matplotlib's object API with an Agg canvas made inside each function: importing this module
or calling it never touches pyplot or the global backend.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from data.cli import make_parser, run_cli
from data.outputs import check_can_write, partial_path

from .errors import SemsegError
from .registry import MODEL_LABELS
from .sweep import METRIC_LABELS

FORMATS = ("png", "pdf")
DPI = 150


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, out_stem: str | Path, overwrite: bool) -> list[Path]:
    """Write ``<out_stem>.png`` and ``.pdf`` (each to a partial name, then renamed)."""
    out_stem = Path(out_stem)
    targets = [out_stem.with_name(f"{out_stem.name}.{fmt}") for fmt in FORMATS]
    for target in targets:
        check_can_write(target, overwrite)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    for target, fmt in zip(targets, FORMATS):
        partial = partial_path(target)
        figure.savefig(partial, format=fmt, bbox_inches="tight")
        os.replace(partial, target)
    return targets


def _read_table(path: str | Path, columns: Sequence[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise SemsegError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype={"model": str})
    except Exception as error:  # noqa: BLE001 - unreadable table is bad input
        raise SemsegError(f"{path}: cannot read CSV ({type(error).__name__}: {error})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SemsegError(f"{path}: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise SemsegError(f"{path}: no rows")
    return frame


def figure1(history_csvs: Mapping[str, str | Path], out_stem: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Figure 1: per model (rows) loss and pixel accuracy vs epoch, train and validation.

    history.csv columns: epoch, loss, pixel_accuracy, val_loss, val_pixel_accuracy, time_s
    (the val_* columns are drawn when present).
    """
    if not history_csvs:
        raise SemsegError("figure1: no history.csv files given")
    histories = {model: _read_table(path, ("epoch", "loss", "pixel_accuracy")) for model, path in history_csvs.items()}
    figure = _new_figure(9.0, 2.6 * len(histories))
    axes = figure.subplots(len(histories), 2, squeeze=False, sharex=True, sharey="col")
    for row, (model, history) in enumerate(histories.items()):
        for col, (key, label) in enumerate((("loss", "Loss (BCE)"), ("pixel_accuracy", "Pixel accuracy"))):
            ax = axes[row, col]
            ax.plot(history["epoch"], history[key], label="train", color="tab:blue")
            if f"val_{key}" in history.columns:
                ax.plot(history["epoch"], history[f"val_{key}"], label="validation", color="tab:orange")
            ax.set_title(f"{MODEL_LABELS.get(model, model)}: {label}", fontsize=10)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row == len(histories) - 1:
                ax.set_xlabel("Epoch")
        axes[row, 0].legend(fontsize=8)
    return _save(figure, out_stem, overwrite)


def figure2(summary_csv: str | Path, optimal_csv: str | Path, out_stem: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Figure 2: rows = models, columns = metrics; mean over images vs threshold, +-1 sd band, optimum marked."""
    metrics = list(METRIC_LABELS)
    summary = _read_table(summary_csv, ["model", "threshold"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")])
    optimal = _read_table(optimal_csv, ["model", "metric", "threshold", "mean"])
    models = list(dict.fromkeys(summary["model"]))
    figure = _new_figure(3.6 * len(metrics), 2.5 * len(models))
    axes = figure.subplots(len(models), len(metrics), squeeze=False, sharex=True, sharey="col")
    for row, model in enumerate(models):
        curve = summary[summary["model"] == model].sort_values("threshold")
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            mean = curve[f"{metric}_mean"].to_numpy(float)
            sd = np.nan_to_num(curve[f"{metric}_std"].to_numpy(float))
            ax.fill_between(curve["threshold"], mean - sd, mean + sd, alpha=0.25, color="tab:blue", linewidth=0)
            ax.plot(curve["threshold"], mean, color="tab:blue")
            best = optimal[(optimal["model"] == model) & (optimal["metric"] == metric)]
            if best.empty:
                raise SemsegError(f"{optimal_csv}: no optimal threshold for model '{model}', metric '{metric}'")
            t, value = float(best["threshold"].iloc[0]), float(best["mean"].iloc[0])
            ax.axvline(t, color="tab:red", linestyle="--", linewidth=1)
            ax.plot([t], [value], "o", color="tab:red", markersize=4)
            ax.annotate(f"t = {t:.2f}\n{value:.3f}", (t, value), xytext=(6, -24), textcoords="offset points",
                        fontsize=8, color="tab:red")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(METRIC_LABELS[metric], fontsize=10)
            if col == 0:
                ax.set_ylabel(MODEL_LABELS.get(model, model))
            if row == len(models) - 1:
                ax.set_xlabel("Threshold")
    return _save(figure, out_stem, overwrite)


def figure4(
    samples: Sequence,
    probs_dirs: Mapping[str, str | Path],
    table1_csv: str | Path,
    out_stem: str | Path,
    n_images: int = 3,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Figure 4: rows = the first ``n_images`` samples; columns = original, ground truth, each model's mask.

    samples: ``data.Sample`` list (the validation images); probs_dirs: model -> folder of
    ``<stem>.npy``; each map is cut at the model's Dice-optimal threshold from table1.csv
    (``prob > t`` in the map's dtype, as in the sweep).
    """
    from .sweep import load_probability_map

    samples = list(samples)[: max(int(n_images), 0)]
    if not samples:
        raise SemsegError("figure4: no samples given")
    if not probs_dirs:
        raise SemsegError("figure4: no models given")
    table1 = _read_table(table1_csv, ("model", "threshold")).set_index("model")
    thresholds = {}
    for model in probs_dirs:
        if model not in table1.index:
            raise SemsegError(f"{table1_csv}: no row for model '{model}'")
        thresholds[model] = float(table1.loc[model, "threshold"])
    masks = {}
    for sample in samples:
        for model, folder in probs_dirs.items():
            path = Path(folder) / f"{sample.name}.npy"
            if not path.is_file():
                raise SemsegError(f"{path}: probability map not found for image '{sample.name}' of model '{model}'")
            prob = load_probability_map(path)
            if prob.shape != sample.shape:
                raise SemsegError(f"{path}: map shape {prob.shape} differs from image '{sample.name}' shape {sample.shape}")
            masks[sample.name, model] = prob > prob.dtype.type(thresholds[model])

    columns = 2 + len(probs_dirs)
    figure = _new_figure(2.4 * columns, 2.4 * len(samples))
    axes = figure.subplots(len(samples), columns, squeeze=False)
    titles = ["Original", "Ground truth"] + [f"{MODEL_LABELS.get(m, m)} (t = {thresholds[m]:.2f})" for m in probs_dirs]
    for row, sample in enumerate(samples):
        panels = [sample.image, sample.mask] + [masks[sample.name, m] for m in probs_dirs]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            if col == 0:
                ax.imshow(np.clip(panel, 0, 1))
                ax.set_ylabel(sample.name, fontsize=8)
            else:
                ax.imshow(panel, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=9)
    return _save(figure, out_stem, overwrite)


def _named_paths(items: Sequence[str]) -> dict[str, Path]:
    named = {}
    for item in items:
        if "=" not in item:
            raise SemsegError(f"expected MODEL=PATH, got '{item}'")
        model, path = item.split("=", 1)
        named[model] = Path(path)
    return named


def _main(argv: Sequence[str] | None = None) -> int:
    """Remake Figure 1 or 2 from CSVs: ``python -m keras_semseg.plots figure2 --summary S --optimal O --out STEM``."""
    parser = make_parser("python -m keras_semseg.plots", description=_main.__doc__)
    commands = parser.add_subparsers(dest="figure", required=True)
    one = commands.add_parser("figure1", help="training curves from history.csv files")
    one.add_argument("--history", nargs="+", required=True, metavar="MODEL=CSV")
    two = commands.add_parser("figure2", help="metric vs threshold from summary.csv and optimal.csv")
    two.add_argument("--summary", required=True, type=Path)
    two.add_argument("--optimal", required=True, type=Path)
    for sub in (one, two):
        sub.add_argument("--out", required=True, type=Path, help="output stem: writes <stem>.png and <stem>.pdf")
        sub.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.figure == "figure1":
        written = figure1(_named_paths(args.history), args.out, overwrite=args.overwrite)
    else:
        written = figure2(args.summary, args.optimal, args.out, overwrite=args.overwrite)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
