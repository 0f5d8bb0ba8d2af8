"""Read and validate per-image score tables and turn them into paired (image x model) tables.

A per-image table is tidy: columns ``model`` (or ``method``), ``image`` (the file stem)
and one numeric column per metric; other columns are ignored. With a ``threshold``
column (the sweep's output, one row per model x image x threshold) an optimal-threshold
table (``model,metric,threshold,...``) chooses, per model and metric, the rows to keep.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import StatsError

MIN_IMAGES = 3
SHOWN = 8
VALUES_COLUMNS = ["metric", "model", "image", "value"]


@dataclass
class Paired:
    """Per metric, a DataFrame of scores: index ``image`` (stems), columns the models in input order."""

    tables: dict[str, pd.DataFrame]
    models: list[str]
    notes: list[str] = field(default_factory=list)

    def values(self) -> pd.DataFrame:
        """The paired scores as one tidy table: metric, model, image, value."""
        parts = []
        for metric, wide in self.tables.items():
            long = wide.rename_axis(index="image", columns="model").stack().rename("value").reset_index()
            long.insert(0, "metric", metric)
            parts.append(long[VALUES_COLUMNS])
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=VALUES_COLUMNS)


def _shown(items: list) -> str:
    text = ", ".join(str(item) for item in items[:SHOWN])
    return text + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")


def read_table(path: str | Path, what: str = "table") -> pd.DataFrame:
    """A CSV as a DataFrame, with ``model``/``method``/``image``/``metric`` read as text."""
    path = Path(path)
    if not path.is_file():
        raise StatsError(f"{what} not found", path)
    try:
        return pd.read_csv(path, dtype={"model": str, "method": str, "image": str, "metric": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise StatsError(f"cannot read {what} as CSV: {str(error).splitlines()[0]}", path) from None


def _model_column(frame: pd.DataFrame) -> str:
    if "model" in frame.columns:
        return "model"
    if "method" in frame.columns:
        return "method"
    raise StatsError(f"missing column 'model' (columns: {', '.join(map(str, frame.columns))})")


def check_metrics(frame: pd.DataFrame, metrics: list[str]) -> list[str]:
    """The metric names, de-duplicated; ``StatsError`` when one is missing or not numeric."""
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(dict.fromkeys(str(metric) for metric in metrics))
    if not metrics:
        raise StatsError("no metrics given")
    for metric in metrics:
        if metric in ("model", "method", "image", "threshold"):
            raise StatsError(f"'{metric}' is not a metric column")
        if metric not in frame.columns:
            raise StatsError(f"missing metric column '{metric}' (columns: {', '.join(map(str, frame.columns))})")
        column = frame[metric]
        if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
            bad = column[pd.to_numeric(column, errors="coerce").isna() & column.notna()]
            example = f" (e.g. {bad.iloc[0]!r})" if len(bad) else ""
            raise StatsError(f"metric column '{metric}' is not numeric{example}")
    return metrics


def coerce_metrics(frame: pd.DataFrame, metrics: list[str], dropna: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Metric columns as numbers: a text cell is an error naming its column and CSV line, or with
    ``dropna`` a missing value (which ``prepare`` then drops and reports). Returns (frame, notes).
    """
    notes: list[str] = []
    frame = frame.copy()
    for metric in metrics:
        if metric not in frame.columns or pd.api.types.is_numeric_dtype(frame[metric]):
            continue
        column = frame[metric]
        numbers = pd.to_numeric(column, errors="coerce")
        bad = column[numbers.isna() & column.notna()]
        if bad.empty:
            continue
        lines = [int(position) + 2 for position in np.flatnonzero((numbers.isna() & column.notna()).to_numpy())]
        if not dropna:
            raise StatsError(
                f"column '{metric}', line {lines[0]}: {bad.iloc[0]!r} is not numeric"
                f"{f' ({len(lines)} such cells)' if len(lines) > 1 else ''}; fix the table or pass --dropna to drop those rows"
            )
        notes.append(f"{metric}: {len(lines)} non-numeric cell(s) read as missing at CSV line(s) {_shown(lines)}")
        frame[metric] = numbers
    return frame, notes


def _optimal_table(at_optimal: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, str | None]:
    if isinstance(at_optimal, (str, Path)):
        return read_table(at_optimal, "optimal-threshold table"), str(at_optimal)
    if isinstance(at_optimal, pd.DataFrame):
        return at_optimal.copy(), None
    raise StatsError(f"at_optimal must be a CSV path or a DataFrame, got {type(at_optimal).__name__}")


def optimal_thresholds(at_optimal: pd.DataFrame | str | Path, models: list[str], metrics: list[str]) -> dict:
    """``{(model, metric): threshold}`` from an optimal-threshold table (columns model, metric, threshold)."""
    table, path = _optimal_table(at_optimal)
    missing = [column for column in ("model", "metric", "threshold") if column not in table.columns]
    if "model" in missing and "method" in table.columns:
        table = table.rename(columns={"method": "model"})
        missing.remove("model")
    if missing:
        raise StatsError(f"optimal-threshold table lacks column(s) {', '.join(missing)}", path)
    table = table.assign(model=table["model"].astype(str), metric=table["metric"].astype(str))
    thresholds = pd.to_numeric(table["threshold"], errors="coerce")
    if thresholds.isna().any():
        raise StatsError("optimal-threshold table has a missing or non-numeric threshold", path)
    table = table.assign(threshold=thresholds)
    result = {}
    for model in models:
        for metric in metrics:
            rows = table[(table["model"] == model) & (table["metric"] == metric)]
            if rows.empty:
                raise StatsError(f"optimal-threshold table has no row for model '{model}', metric '{metric}'", path)
            values = np.unique(np.round(rows["threshold"].to_numpy(dtype=float), 2))
            if values.size > 1:
                raise StatsError(
                    f"optimal-threshold table gives several thresholds for model '{model}', metric '{metric}'", path
                )
            result[(model, metric)] = float(values[0])
    return result


def prepare(
    frame: pd.DataFrame,
    metrics: list[str],
    at_optimal: pd.DataFrame | str | Path | None = None,
    dropna: bool = False,
) -> Paired:
    """Validate a per-image table and pair it: per metric, only images that every model has.

    Raises ``StatsError`` (one line) for: fewer than two models, a missing or
    non-numeric metric column, NaN/infinite scores (unless ``dropna``), several rows per
    model and image, and fewer than three paired images.
    """
    if not isinstance(frame, pd.DataFrame):
        raise StatsError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    model_column = _model_column(frame)
    if "image" not in frame.columns:
        raise StatsError(f"missing column 'image' (columns: {', '.join(map(str, frame.columns))})")
    metrics = check_metrics(frame, metrics)
    notes: list[str] = []
    if model_column == "method":
        notes.append("column 'method' used as the model column")
    if frame[[model_column, "image"]].isna().to_numpy().any():
        raise StatsError("empty 'model' or 'image' cell in the per-image table")
    frame = frame.assign(model=frame[model_column].astype(str), image=frame["image"].astype(str))
    models = list(dict.fromkeys(frame["model"]))
    if len(models) < 2:
        raise StatsError(f"need at least two models to compare, found {len(models)}: {_shown(models)}")

    selections = _select_rows(frame, models, metrics, at_optimal, notes)

    tables: dict[str, pd.DataFrame] = {}
    for metric in metrics:
        rows = selections[metric]
        duplicated = rows[rows.duplicated(["model", "image"], keep=False)]
        if not duplicated.empty:
            pairs = list(dict.fromkeys(zip(duplicated["model"], duplicated["image"])))
            raise StatsError(f"metric '{metric}': several rows for (model, image) {_shown(pairs)}")
        values = rows[metric].astype(float)
        bad = rows[~np.isfinite(values)]
        if not bad.empty:
            pairs = [f"({model}, {image})" for model, image in zip(bad["model"], bad["image"])]
            if not dropna:
                raise StatsError(
                    f"metric '{metric}' has NaN or infinite values at (model, image) {_shown(pairs)}; "
                    "pass --dropna to drop those rows"
                )
            notes.append(f"{metric}: dropped {len(pairs)} NaN/infinite value(s) at {_shown(pairs)}")
            rows = rows[np.isfinite(values)]
        image_order = list(dict.fromkeys(rows["image"]))
        wide = rows.pivot(index="image", columns="model", values=metric).reindex(index=image_order, columns=models)
        incomplete = wide.index[wide.isna().any(axis=1)].tolist()
        wide = wide.dropna(axis=0, how="any").astype(float)
        wide.index.name = "image"
        wide.columns.name = None
        if incomplete:
            notes.append(
                f"{metric}: dropped {len(incomplete)} image(s) not scored by every model: {_shown(incomplete)}"
            )
        if len(wide) < MIN_IMAGES:
            raise StatsError(
                f"metric '{metric}': only {len(wide)} image(s) scored by every model; "
                f"need at least {MIN_IMAGES} paired images"
            )
        notes.append(f"{metric}: {len(wide)} paired images x {len(models)} models")
        tables[metric] = wide
    return Paired(tables=tables, models=models, notes=notes)


def _select_rows(
    frame: pd.DataFrame, models: list[str], metrics: list[str], at_optimal, notes: list[str]
) -> dict[str, pd.DataFrame]:
    """Per metric, the rows to use: at each model's optimal threshold when thresholds are swept."""
    has_threshold = "threshold" in frame.columns
    if at_optimal is None:
        if has_threshold and frame.duplicated(["model", "image"]).any():
            n_thresholds = frame["threshold"].nunique()
            raise StatsError(
                f"several rows per model and image ({n_thresholds} thresholds in column 'threshold'); "
                "pass --at-optimal OPTIMAL.csv to keep each model's rows at its optimal threshold"
            )
        return {metric: frame for metric in metrics}
    if not has_threshold:
        notes.append("optimal-threshold table ignored: the per-image table has no 'threshold' column")
        return {metric: frame for metric in metrics}
    thresholds = pd.to_numeric(frame["threshold"], errors="coerce")
    if thresholds.isna().any():
        raise StatsError("column 'threshold' has missing or non-numeric values")
    rounded = np.round(thresholds.to_numpy(dtype=float), 2)
    chosen = optimal_thresholds(at_optimal, models, metrics)
    selections = {}
    for metric in metrics:
        keep = np.zeros(len(frame), dtype=bool)
        for model in models:
            threshold = chosen[(model, metric)]
            at_threshold = (frame["model"].to_numpy() == model) & (np.abs(rounded - threshold) < 1e-9)
            if not at_threshold.any():
                raise StatsError(
                    f"no rows of model '{model}' at its optimal {metric} threshold {threshold:.2f} in the per-image table"
                )
            keep |= at_threshold
        selections[metric] = frame[keep]
        summary = ", ".join(f"{model} {chosen[(model, metric)]:.2f}" for model in models)
        notes.append(f"{metric}: rows at each model's optimal {metric} threshold ({summary})")
    return selections


def paired_from_values(values: pd.DataFrame, metrics: list[str]) -> Paired:
    """Rebuild ``Paired`` from the ``values.csv`` that ``analyse`` writes (metric, model, image, value)."""
    missing = [column for column in VALUES_COLUMNS if column not in values.columns]
    if missing:
        raise StatsError(f"values table lacks column(s) {', '.join(missing)}")
    values = values.assign(metric=values["metric"].astype(str), model=values["model"].astype(str),
                           image=values["image"].astype(str))
    models = list(dict.fromkeys(values["model"]))
    tables = {}
    for metric in metrics:
        rows = values[values["metric"] == metric]
        if rows.empty:
            raise StatsError(f"values table has no rows for metric '{metric}'")
        frame = rows.rename(columns={"value": metric})[["model", "image", metric]]
        tables[metric] = prepare(frame, [metric]).tables[metric]
    return Paired(tables=tables, models=models)
