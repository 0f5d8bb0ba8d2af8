"""Figure 3: per-model score distributions with post hoc significance brackets, drawn from CSVs.

``figure3`` reads the paired scores (``values.csv`` written by ``analyse``, or a per-image
table) and the post hoc matrices (``<test>_<metric>.csv`` in a folder, or DataFrames),
so the figure can be remade without recomputing anything.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd
from data.outputs import check_can_write, partial_path

from .errors import StatsError
from .inputs import VALUES_COLUMNS, Paired, paired_from_values, prepare, read_table
from .posthoc import DESCRIPTIONS, POSTHOC_TESTS

STARS = ((0.0001, "****"), (0.001, "***"), (0.01, "**"), (0.05, "*"))
KINDS = ("box", "violin")


def significance_label(p_value: float) -> str:
    """``****`` p<0.0001, ``***`` p<0.001, ``**`` p<0.01, ``*`` p<0.05, else ``ns``; ``n/a`` for NaN."""
    if p_value is None or not np.isfinite(p_value):
        return "n/a"
    for limit, label in STARS:
        if p_value < limit:
            return label
    return "ns"


def _scores(per_image, metrics: list[str], at_optimal, dropna: bool) -> Paired:
    frame = read_table(per_image, "per-image table") if isinstance(per_image, (str, Path)) else per_image
    if not isinstance(frame, pd.DataFrame):
        raise StatsError(f"per_image must be a CSV path or a DataFrame, got {type(per_image).__name__}")
    if set(VALUES_COLUMNS) <= set(frame.columns):
        return paired_from_values(frame, metrics)
    return prepare(frame, metrics, at_optimal=at_optimal, dropna=dropna)


def _matrix(posthoc_dir_or_matrices, test: str, metric: str) -> pd.DataFrame:
    source = posthoc_dir_or_matrices
    if isinstance(source, (str, Path)):
        path = Path(source) / f"{test}_{metric}.csv"
        table = read_table(path, f"{test} post hoc matrix")
        if "model" not in table.columns:
            raise StatsError("post hoc matrix lacks its first column 'model'", path)
        matrix = table.set_index("model")
    elif isinstance(source, dict):
        per_metric = source.get(test, source) if isinstance(source.get(test), dict) else source
        if metric not in per_metric:
            raise StatsError(f"no {test} post hoc matrix for metric '{metric}'")
        matrix = per_metric[metric]
    else:
        raise StatsError("posthoc_dir_or_matrices must be a folder or a dict of DataFrames")
    matrix = matrix.copy()
    matrix.index = matrix.index.astype(str)
    matrix.columns = matrix.columns.astype(str)
    return matrix


def _panel(axes, wide: pd.DataFrame, matrix: pd.DataFrame, metric: str, kind: str, rng) -> None:
    models = [str(model) for model in wide.columns]
    missing = [model for model in models if model not in matrix.index or model not in matrix.columns]
    if missing:
        raise StatsError(f"post hoc matrix for '{metric}' lacks model(s) {', '.join(missing)}")
    data = [wide[model].to_numpy(dtype=float) for model in wide.columns]
    positions = np.arange(1, len(models) + 1)
    colours = [f"C{i % 10}" for i in range(len(models))]
    if kind == "violin" and all(np.ptp(values) > 0 for values in data):
        parts = axes.violinplot(data, positions=positions, showmedians=True, widths=0.7)
        for body, colour in zip(parts["bodies"], colours):
            body.set_facecolor(colour)
            body.set_alpha(0.35)
        for name in ("cmedians", "cbars", "cmins", "cmaxes"):
            parts[name].set_color("black")
            parts[name].set_linewidth(0.8)
    else:
        boxes = axes.boxplot(data, positions=positions, widths=0.55, showfliers=False, patch_artist=True)
        for box, colour in zip(boxes["boxes"], colours):
            box.set_facecolor(colour)
            box.set_alpha(0.35)
    for position, values, colour in zip(positions, data, colours):
        jitter = rng.uniform(-0.12, 0.12, size=values.size)
        axes.scatter(position + jitter, values, s=9, color=colour, alpha=0.7, linewidths=0, zorder=3)

    low = min(float(np.min(values)) for values in data)
    high = max(float(np.max(values)) for values in data)
    span = high - low if high > low else max(abs(high), 1.0) * 0.1
    step = 0.08 * span
    pairs = sorted(itertools.combinations(range(len(models)), 2), key=lambda pair: (pair[1] - pair[0], pair[0]))
    placed: list[tuple[int, int, float]] = []
    for i, j in pairs:
        y = max(float(np.max(values)) for values in data[i:j + 1]) + step * 0.6
        for first, last, other in placed:
            if not (last < i or first > j):
                y = max(y, other + step)
        placed.append((i, j, y))
        label = significance_label(float(matrix.loc[models[i], models[j]]))
        axes.plot([positions[i], positions[i], positions[j], positions[j]],
                  [y, y + step * 0.3, y + step * 0.3, y], color="black", linewidth=0.8)
        axes.text((positions[i] + positions[j]) / 2, y + step * 0.35, label, ha="center", va="bottom", fontsize=8)
    top = max(y for _, _, y in placed) + step * 1.3 if placed else high + step
    axes.set_ylim(low - step, top)
    axes.set_yticks([tick for tick in axes.get_yticks() if low - step <= tick <= high + 1e-9])
    axes.set_xticks(positions)
    axes.set_xticklabels(models, rotation=20, ha="right")
    axes.set_title(metric)
    axes.set_ylabel(metric)
    axes.grid(axis="y", alpha=0.3)


def figure3(
    per_image,
    posthoc_dir_or_matrices,
    metrics: list[str],
    out_stem: str | Path,
    test: str = "dunn",
    *,
    at_optimal=None,
    dropna: bool = False,
    kind: str = "box",
    overwrite: bool = False,
) -> list[Path]:
    """Draw Figure 3 as ``<out_stem>.png`` and ``<out_stem>.pdf``; returns the two paths.

    ``per_image``: ``values.csv`` from ``analyse`` (metric, model, image, value) or a
    per-image table (model, image, metric columns; ``at_optimal``/``dropna`` as in
    ``analyse``), as a path or DataFrame. ``posthoc_dir_or_matrices``: the folder with
    ``<test>_<metric>.csv``, or ``{metric: matrix}`` / ``{test: {metric: matrix}}``.
    One panel per metric: box (or violin) plus points per model, and a bracket per model
    pair labelled from the ``test`` matrix (* p<0.05 ... **** p<0.0001, ns).
    """
    if test not in POSTHOC_TESTS:
        raise StatsError(f"unknown post hoc test '{test}'; choose one of: {', '.join(POSTHOC_TESTS)}")
    if kind not in KINDS:
        raise StatsError(f"unknown plot kind '{kind}'; choose one of: {', '.join(KINDS)}")
    if isinstance(metrics, str):
        metrics = [metrics]
    out_stem = Path(out_stem)
    paths = [out_stem.with_name(out_stem.name + suffix) for suffix in (".png", ".pdf")]
    for path in paths:
        check_can_write(path, overwrite)
    paired = _scores(per_image, list(metrics), at_optimal, dropna)
    matrices = {metric: _matrix(posthoc_dir_or_matrices, test, metric) for metric in paired.tables}

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_panels = len(paired.tables)
    width = max(3.2, 0.9 * len(paired.models) + 1.6)
    figure = Figure(figsize=(width * n_panels, 4.8))
    FigureCanvasAgg(figure)
    rng = np.random.default_rng(0)
    axes_list = figure.subplots(1, n_panels, squeeze=False)[0]
    for axes, (metric, wide) in zip(axes_list, paired.tables.items()):
        _panel(axes, wide, matrices[metric], metric, kind, rng)
    caption = DESCRIPTIONS[test].split(";")[0]
    figure.text(0.5, 0.005, f"Brackets: {caption}. * p<0.05, ** p<0.01, *** p<0.001, **** p<0.0001, ns not significant",
                ha="center", va="bottom", fontsize=7, wrap=True)
    figure.tight_layout(rect=(0, 0.04, 1, 1))

    out_stem.parent.mkdir(parents=True, exist_ok=True)
    for path in paths:
        partial = partial_path(path)
        figure.savefig(partial, format=path.suffix[1:], dpi=150)
        os.replace(partial, path)
    return paths
