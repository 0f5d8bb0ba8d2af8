"""Pairwise post hoc tests and bootstrap confidence intervals on paired per-image scores.

Every function takes ``frame_wide``: a DataFrame with one row per image and one column per
model (float scores, no NaN). Each test returns a square DataFrame of adjusted p-values,
models as index (named ``model``) and columns in the order of ``frame_wide``, 1.0 on the
diagonal. Data on which a test is undefined (all values identical) give NaN off the
diagonal.

- ``dunn_bonferroni``: Dunn's test (scikit-posthocs ``posthoc_dunn``), Bonferroni.
  It ranks all values together and treats the models as independent groups: the
  paper's choice, which ignores that every model saw the same images.
- ``conover_friedman``: Conover's test after Friedman (scikit-posthocs
  ``posthoc_conover_friedman``), Holm. Ranks within each image: respects pairing.
- ``wilcoxon_holm``: Wilcoxon signed-rank test per pair (``scipy.stats.wilcoxon``,
  zero differences dropped, exact p for small samples without ties), Holm. Paired.
"""
from __future__ import annotations

import itertools
import warnings
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .errors import StatsError

DIFFERENCES_COLUMNS = ["model_a", "model_b", "median_difference", "ci_low", "ci_high", "n"]

DESCRIPTIONS = {
    "dunn": "Dunn's test with Bonferroni correction (scikit-posthocs posthoc_dunn); "
    "treats the models as independent groups, ignoring that the images are paired (the paper's choice)",
    "conover": "Conover's test for the Friedman design with Holm correction "
    "(scikit-posthocs posthoc_conover_friedman); ranks within each image, respects pairing",
    "wilcoxon": "Wilcoxon signed-rank test per model pair with Holm correction "
    "(scipy.stats.wilcoxon, zero differences dropped); respects pairing",
}


def _square(p_upper: dict[tuple[int, int], float], models: list) -> pd.DataFrame:
    k = len(models)
    matrix = np.ones((k, k))
    for (i, j), p_value in p_upper.items():
        matrix[i, j] = matrix[j, i] = p_value
    names = [str(model) for model in models]
    return pd.DataFrame(matrix, index=pd.Index(names, name="model"), columns=names)


def _undefined(models: list) -> pd.DataFrame:
    pairs = itertools.combinations(range(len(models)), 2)
    return _square({pair: np.nan for pair in pairs}, models)


def _all_identical(frame_wide: pd.DataFrame) -> bool:
    values = frame_wide.to_numpy(dtype=float)
    return values.size == 0 or bool(np.ptp(values) == 0)


def _check(frame_wide: pd.DataFrame) -> None:
    if frame_wide.shape[1] < 2:
        raise StatsError(f"a post hoc test needs at least two models, got {frame_wide.shape[1]}")
    if frame_wide.isna().to_numpy().any():
        raise StatsError("post hoc tests need complete paired data (NaN found)")


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a 1-D array of p-values (NaN stay NaN and are not counted)."""
    p_values = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p_values, np.nan)
    finite = np.flatnonzero(np.isfinite(p_values))
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(p_values[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p_values[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def dunn_bonferroni(frame_wide: pd.DataFrame) -> pd.DataFrame:
    """Dunn's test with Bonferroni correction, as the paper ran it (groups treated as independent)."""
    import scikit_posthocs as sp

    _check(frame_wide)
    models = list(frame_wide.columns)
    if _all_identical(frame_wide):
        return _undefined(models)
    long = pd.DataFrame({
        "value": frame_wide.to_numpy(dtype=float).T.ravel(),
        "group": np.repeat(np.arange(len(models)), len(frame_wide)),
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sp.posthoc_dunn(long, val_col="value", group_col="group", p_adjust="bonferroni")
    result = result.reindex(index=range(len(models)), columns=range(len(models)))
    pairs = itertools.combinations(range(len(models)), 2)
    return _square({(i, j): float(result.iloc[i, j]) for i, j in pairs}, models)


def conover_friedman(frame_wide: pd.DataFrame) -> pd.DataFrame:
    """Conover's all-pairs test for the Friedman design (images are blocks), Holm-adjusted."""
    import scikit_posthocs as sp

    _check(frame_wide)
    models = list(frame_wide.columns)
    values = frame_wide.to_numpy(dtype=float)
    if _all_identical(frame_wide) or all(np.ptp(row) == 0 for row in values):
        return _undefined(models)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sp.posthoc_conover_friedman(values, p_adjust="holm")
    pairs = itertools.combinations(range(len(models)), 2)
    return _square({(i, j): float(result.iloc[i, j]) for i, j in pairs}, models)


def wilcoxon_pair(first: np.ndarray, second: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired scores; 1.0 when every difference is zero."""
    differences = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    if np.all(differences == 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(scipy_stats.wilcoxon(differences).pvalue)


def wilcoxon_holm(frame_wide: pd.DataFrame) -> pd.DataFrame:
    """Pairwise Wilcoxon signed-rank tests on the paired scores, Holm-adjusted over all pairs."""
    _check(frame_wide)
    models = list(frame_wide.columns)
    if _all_identical(frame_wide):
        return _undefined(models)
    values = frame_wide.to_numpy(dtype=float)
    pairs = list(itertools.combinations(range(len(models)), 2))
    raw = np.array([wilcoxon_pair(values[:, i], values[:, j]) for i, j in pairs])
    return _square(dict(zip(pairs, holm(raw))), models)


def degenerate_notes(frame_wide: pd.DataFrame) -> list[str]:
    """Warnings about data on which the paired tests behave in a degenerate way."""
    values = frame_wide.to_numpy(dtype=float)
    notes = []
    if len(values) and not _all_identical(frame_wide):
        ranks = scipy_stats.rankdata(values, axis=1)
        if np.all(ranks == ranks[0]) and np.unique(ranks[0]).size == ranks.shape[1]:
            notes.append(
                "every image ranks the models in the same order: Conover's error variance is zero, "
                "so its p-values are 0 by the formula"
            )
    if len(values) < 6:
        notes.append(f"only {len(values)} paired images: the Wilcoxon signed-rank test cannot reach p < 0.05")
    return notes


POSTHOC_TESTS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "dunn": dunn_bonferroni,
    "conover": conover_friedman,
    "wilcoxon": wilcoxon_holm,
}


def bootstrap_median_difference(
    frame_wide: pd.DataFrame, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """Median of the paired differences (model_a - model_b, per image) with a percentile bootstrap CI.

    Images are resampled with replacement ``n_boot`` times; one set of resamples (from
    ``numpy.random.default_rng(seed)``) serves every pair, so results do not depend on
    the number or order of pairs. Returns one row per model pair (a before b in column
    order) with columns model_a, model_b, median_difference, ci_low, ci_high, n.
    """
    _check(frame_wide)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise StatsError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < confidence < 1:
        raise StatsError(f"confidence must lie between 0 and 1, got {confidence!r}")
    values = frame_wide.to_numpy(dtype=float)
    n_images = values.shape[0]
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, n_images, size=(int(n_boot), n_images), dtype=np.int64)
    tail = 100.0 * (1.0 - confidence) / 2.0
    rows = []
    models = [str(m) for m in frame_wide.columns]
    for i, j in itertools.combinations(range(len(models)), 2):
        differences = values[:, i] - values[:, j]
        medians = np.concatenate([
            np.median(differences[chunk], axis=1) for chunk in np.array_split(resamples, max(1, n_boot // 500))
        ])
        low, high = np.percentile(medians, [tail, 100.0 - tail])
        rows.append((models[i], models[j], float(np.median(differences)), float(low), float(high), n_images))
    return pd.DataFrame(rows, columns=DIFFERENCES_COLUMNS)
