"""``analyse``: the whole statistics step on a per-image score table, optionally written as CSVs."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from data.outputs import atomic_write_text, check_can_write, write_csv

from .errors import StatsError
from .inputs import prepare
from .posthoc import DESCRIPTIONS, POSTHOC_TESTS, bootstrap_median_difference, degenerate_notes
from .tests import omnibus

SUMMARY_COLUMNS = ["metric", "model", "mean", "sd", "median", "n"]
FILE_SAFE = re.compile(r"[A-Za-z0-9_.\-]+")


def summary_table(wide: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean, sample sd (ddof=1), median and n of each model's paired scores."""
    return pd.DataFrame({
        "metric": metric,
        "model": [str(model) for model in wide.columns],
        "mean": wide.mean(axis=0).to_numpy(),
        "sd": wide.std(axis=0, ddof=1).to_numpy(),
        "median": wide.median(axis=0).to_numpy(),
        "n": len(wide),
    })[SUMMARY_COLUMNS]


def output_files(out_dir: str | Path, metrics: list[str]) -> list[Path]:
    """Every file ``analyse`` writes into ``out_dir``."""
    out_dir = Path(out_dir)
    files = [out_dir / name for name in ("tests.csv", "summary.csv", "values.csv", "notes.txt")]
    for metric in metrics:
        files += [out_dir / f"{test}_{metric}.csv" for test in POSTHOC_TESTS]
        files.append(out_dir / f"differences_{metric}.csv")
    return files


def matrix_for_csv(matrix: pd.DataFrame) -> pd.DataFrame:
    """A square p-value matrix with its index written as the first column, ``model``."""
    return matrix.rename_axis("model").reset_index()


def _header(posthoc: str, n_boot: int, seed: int) -> list[str]:
    return [
        "Statistics on paired per-image scores: every model scored the same images (related samples);",
        "only images that every model has are used.",
        "tests.csv: Shapiro-Wilk per model (group = model), Levene across models (centred on the median, "
        "scipy default), Friedman across models (tie-corrected chi-squared, df = models - 1); n = paired images.",
        f"dunn_<metric>.csv: {DESCRIPTIONS['dunn']}.",
        f"conover_<metric>.csv: {DESCRIPTIONS['conover']}.",
        f"wilcoxon_<metric>.csv: {DESCRIPTIONS['wilcoxon']}.",
        "Dunn's test ranks all scores together as if each model had its own images; the paired tests compare "
        "models within each image and are the appropriate ones for this design.",
        f"differences_<metric>.csv: median of the per-image differences model_a - model_b, with a 95% percentile "
        f"bootstrap CI ({n_boot} resamples of images, seed {seed}).",
        "summary.csv: mean, sd (ddof=1), median and n over the paired images. values.csv: the paired scores used.",
        f"Figure 3 brackets: {posthoc} ({DESCRIPTIONS[posthoc].split(';')[0]}).",
    ]


def analyse(
    frame: pd.DataFrame,
    metrics: list[str],
    out_dir: str | Path | None = None,
    *,
    posthoc: str = "dunn",
    at_optimal: pd.DataFrame | str | Path | None = None,
    dropna: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
    overwrite: bool = False,
    notes: list[str] | None = None,
) -> dict:
    """Omnibus tests, post hoc matrices and bootstrap differences per metric.

    ``frame``: tidy per-image scores (columns model, image, one per metric; a
    ``threshold`` column needs ``at_optimal`` unless each model x image occurs once).
    ``posthoc`` ("dunn", "conover" or "wilcoxon") names the test that drives Figure 3;
    all three are always computed. Returns a dict: ``tests``, ``summary``, ``values``
    (DataFrames), ``posthoc`` ({test: {metric: square DataFrame}}), ``differences``
    ({metric: DataFrame}), ``notes`` (list of lines), ``figure_test``, ``files`` (written
    paths, empty without ``out_dir``); ``notes`` are extra lines for the Data section. Raises ``StatsError`` on bad input before writing.
    """
    if posthoc not in POSTHOC_TESTS:
        raise StatsError(f"unknown post hoc test '{posthoc}'; choose one of: {', '.join(POSTHOC_TESTS)}")
    paired = prepare(frame, metrics, at_optimal=at_optimal, dropna=dropna)
    metrics = list(paired.tables)
    files: list[Path] = []
    if out_dir is not None:
        unsafe = [metric for metric in metrics if not FILE_SAFE.fullmatch(metric)]
        if unsafe:
            raise StatsError(f"metric name(s) {', '.join(map(repr, unsafe))} cannot be used in file names")
        files = output_files(out_dir, metrics)
        for path in files:
            check_can_write(path, overwrite)

    tests, summaries, differences = [], [], {}
    matrices: dict[str, dict[str, pd.DataFrame]] = {test: {} for test in POSTHOC_TESTS}
    notes = _header(posthoc, n_boot, seed) + ["", "Data:"] + list(notes or []) + paired.notes
    findings: list[str] = []
    for metric, wide in paired.tables.items():
        table = omnibus(wide, metric)
        tests.append(table)
        summaries.append(summary_table(wide, metric))
        for test, function in POSTHOC_TESTS.items():
            matrices[test][metric] = function(wide)
        differences[metric] = bootstrap_median_difference(wide, n_boot=n_boot, seed=seed)
        if np.ptp(wide.to_numpy()) == 0:
            findings.append(f"{metric}: all values identical; tests and post hoc p-values are undefined (NaN)")
        else:
            findings += [f"{metric}: {row.test} ({row.group}): {row.note}" for row in table.itertuples() if row.note]
            findings += [f"{metric}: {line}" for line in degenerate_notes(wide)]
    if findings:
        notes += ["", "Warnings:"] + findings

    result = {
        "tests": pd.concat(tests, ignore_index=True),
        "summary": pd.concat(summaries, ignore_index=True),
        "values": paired.values(),
        "posthoc": matrices,
        "differences": differences,
        "notes": notes,
        "figure_test": posthoc,
        "files": files,
    }
    if out_dir is not None:
        _write(Path(out_dir), result)
    return result


def _write(out_dir: Path, result: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "tests.csv", result["tests"])
    write_csv(out_dir / "summary.csv", result["summary"])
    write_csv(out_dir / "values.csv", result["values"])
    for test, per_metric in result["posthoc"].items():
        for metric, matrix in per_metric.items():
            write_csv(out_dir / f"{test}_{metric}.csv", matrix_for_csv(matrix))
    for metric, table in result["differences"].items():
        write_csv(out_dir / f"differences_{metric}.csv", table)
    atomic_write_text(out_dir / "notes.txt", "\n".join(result["notes"]) + "\n")
