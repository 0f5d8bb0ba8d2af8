"""Omnibus tests on paired per-image scores: Shapiro-Wilk, Levene, Friedman.

Every function takes ``wide``: a DataFrame with one row per image and one column per
model (float scores, no NaN). A test that is undefined for the data (for example, all
values identical) gives NaN statistics and a note instead of raising.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

TESTS_COLUMNS = ["metric", "test", "group", "statistic", "p_value", "n", "note"]


class OmnibusResult(NamedTuple):
    statistic: float
    p_value: float
    note: str = ""


def shapiro(values: np.ndarray) -> OmnibusResult:
    """Shapiro-Wilk normality test of one model's scores (1-D, at least 3 values)."""
    values = np.asarray(values, dtype=float)
    if values.size < 3:
        return OmnibusResult(np.nan, np.nan, "fewer than 3 values: Shapiro-Wilk undefined")
    if np.ptp(values) == 0:
        return OmnibusResult(np.nan, np.nan, "all values identical: Shapiro-Wilk undefined")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = scipy_stats.shapiro(values)
    note = "n > 5000: p-value approximate (scipy)" if values.size > 5000 else ""
    return OmnibusResult(float(result.statistic), float(result.pvalue), note)


def levene(wide: pd.DataFrame) -> OmnibusResult:
    """Levene's test of equal variances across models (scipy default: centred on the median, Brown-Forsythe)."""
    groups = [wide[column].to_numpy(dtype=float) for column in wide.columns]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = scipy_stats.levene(*groups, center="median")
    if not np.isfinite(result.statistic):
        return OmnibusResult(np.nan, np.nan, "no spread within any model: Levene undefined")
    return OmnibusResult(float(result.statistic), float(result.pvalue))


def friedman(wide: pd.DataFrame) -> OmnibusResult:
    """Friedman rank-sum test for related samples (images are blocks, models are treatments).

    Ranks within each image, average ranks for ties, tie-corrected chi-squared with
    k - 1 degrees of freedom: the statistic of R's ``friedman.test`` and
    ``scipy.stats.friedmanchisquare``, also defined for two models.
    """
    values = wide.to_numpy(dtype=float)
    n_blocks, k = values.shape
    if k < 2 or n_blocks < 2:
        return OmnibusResult(np.nan, np.nan, "needs at least 2 models and 2 images: Friedman undefined")
    ranks = scipy_stats.rankdata(values, axis=1)
    rank_sums = ranks.sum(axis=0)
    chi2 = 12.0 / (n_blocks * k * (k + 1)) * np.sum(rank_sums**2) - 3.0 * n_blocks * (k + 1)
    tie_total = 0.0
    for row in values:
        _, counts = np.unique(row, return_counts=True)
        tie_total += float(np.sum(counts**3 - counts))
    correction = 1.0 - tie_total / (n_blocks * k * (k * k - 1))
    if correction <= 0:
        return OmnibusResult(np.nan, np.nan, "every image ties all models: Friedman undefined")
    chi2 /= correction
    return OmnibusResult(float(chi2), float(scipy_stats.chi2.sf(chi2, k - 1)))


def omnibus(wide: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows of tests.csv for one metric: Shapiro per model, then Levene and Friedman (group ``all``).

    ``n`` is the number of paired images in every row.
    """
    n_images = len(wide)
    rows = []
    for model in wide.columns:
        result = shapiro(wide[model].to_numpy(dtype=float))
        rows.append((metric, "shapiro", str(model), *result[:2], n_images, result.note))
    for name, function in (("levene", levene), ("friedman", friedman)):
        result = function(wide)
        rows.append((metric, name, "all", *result[:2], n_images, result.note))
    return pd.DataFrame(rows, columns=TESTS_COLUMNS)
