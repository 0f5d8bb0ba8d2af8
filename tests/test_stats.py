"""Known-answer and behaviour tests for stats.tests, stats.posthoc and stats.analyse.

Reference values come from published examples (sources cited per test) or from
independent numpy implementations of the textbook formulas written here, never from
the code under test.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

import stats
from stats import StatsError
from stats.posthoc import (
    bootstrap_median_difference,
    conover_friedman,
    dunn_bonferroni,
    holm,
    wilcoxon_holm,
)
from stats.tests import friedman, levene, omnibus, shapiro

# Hollander & Wolfe (1973), Nonparametric Statistical Methods, p. 140ff: times for three
# ways of rounding first base; the example of R's ?friedman.test, where
# friedman.test(RoundingTimes) prints "Friedman chi-squared = 11.143, df = 2, p-value = 0.003805".
ROUNDING_TIMES = np.array([
    [5.40, 5.50, 5.55], [5.85, 5.70, 5.75], [5.20, 5.60, 5.50], [5.55, 5.50, 5.40],
    [5.90, 5.85, 5.70], [5.45, 5.55, 5.60], [5.40, 5.40, 5.35], [5.45, 5.50, 5.35],
    [5.25, 5.15, 5.00], [5.85, 5.80, 5.70], [5.25, 5.20, 5.10], [5.65, 5.55, 5.45],
    [5.60, 5.35, 5.45], [5.05, 5.00, 4.95], [5.50, 5.50, 5.40], [5.45, 5.55, 5.50],
    [5.55, 5.55, 5.35], [5.45, 5.50, 5.55], [5.50, 5.45, 5.25], [5.65, 5.60, 5.40],
    [5.70, 5.65, 5.55], [6.30, 6.30, 6.25],
])

# seaborn-data "exercise" (pulse by kind, 30 per group), the data set of the scikit-posthocs
# test suite (tests/test_posthocs.py::test_posthoc_dunn), whose reference values were
# computed in R (PMCMR): Dunn, Holm-adjusted, groups sorted rest / running / walking:
# rest-running 9.570998e-09, rest-walking 4.390066e-02, running-walking 1.873208e-04.
PULSE = {
    "rest": [85, 85, 88, 90, 92, 93, 97, 97, 94, 80, 82, 83, 91, 92, 91,
             83, 83, 84, 87, 88, 90, 92, 94, 95, 97, 99, 96, 100, 97, 100],
    "walking": [86, 86, 84, 93, 103, 104, 90, 92, 93, 95, 96, 100, 89, 96, 95,
                84, 86, 89, 103, 109, 90, 92, 96, 101, 97, 98, 100, 102, 104, 103],
    "running": [93, 98, 110, 98, 104, 112, 98, 105, 99, 87, 132, 120, 94, 110, 116,
                95, 126, 143, 100, 126, 140, 103, 124, 140, 94, 135, 130, 99, 111, 150],
}

# 3 blocks x 7 groups from the scikit-posthocs test suite (tests/test_posthocs.py, ``df_bn``).
# Unadjusted Conover p-values for the Friedman design computed by hand from Conover (1999),
# Practical Nonparametric Statistics, 3rd ed., section 5.8: within-block ranks, rank sums
# R = [7, 7.5, 14, 13, 13, 19.5, 10], sum of squared ranks A1 = 415, b = 3, k = 7,
# t = |R_i - R_j| / sqrt(2 (b A1 - sum R^2) / ((b - 1)(k - 1))) = |R_i - R_j| / 4.5734742,
# two-sided Student t with (b - 1)(k - 1) = 12 df. (The older reference values in that
# test file, e.g. 0.0517417 for groups 1 and 6, came from a superseded scikit-posthocs
# formula and do not follow this equation.)
BLOCKS_7 = np.array([[4, 3, 4, 4, 5, 6, 3], [1, 2, 3, 5, 6, 7, 7], [1, 2, 6, 4, 1, 5, 1]], dtype=float)
CONOVER_7_UNADJUSTED = np.array([
    [1, 0.91475081, 0.15180299, 0.21409271, 0.21409271, 0.018160199, 0.52423028],
    [0.91475081, 1, 0.18071036, 0.25232845, 0.25232845, 0.022227471, 0.59465124],
    [0.15180299, 0.18071036, 1, 0.83059553, 0.83059553, 0.25232845, 0.39895352],
    [0.21409271, 0.25232845, 0.83059553, 1, 1, 0.18071036, 0.52423028],
    [0.21409271, 0.25232845, 0.83059553, 1, 1, 0.18071036, 0.52423028],
    [0.018160199, 0.022227471, 0.25232845, 0.18071036, 0.18071036, 1, 0.059919844],
    [0.52423028, 0.59465124, 0.39895352, 0.52423028, 0.52423028, 0.059919844, 1],
])


def hand_holm(p_values: list[float]) -> np.ndarray:
    """Holm step-down written out: sort, multiply the i-th smallest by (m - i), running max, cap at 1."""
    p_values = np.asarray(p_values, dtype=float)
    m = len(p_values)
    order = np.argsort(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def hand_dunn_bonferroni(groups: list[np.ndarray]) -> np.ndarray:
    """Dunn (1964) z with the tie correction of Glantz (2012), two-sided normal p, times the pair count."""
    values = np.concatenate(groups)
    n = values.size
    ranks = scipy_stats.rankdata(values)
    sizes = [len(g) for g in groups]
    starts = np.cumsum([0] + sizes)
    mean_ranks = [ranks[starts[i]:starts[i + 1]].mean() for i in range(len(groups))]
    _, ties = np.unique(values, return_counts=True)
    tie_term = np.sum(ties**3 - ties) / (12.0 * (n - 1))
    k = len(groups)
    pairs = list(itertools.combinations(range(k), 2))
    out = np.ones((k, k))
    for i, j in pairs:
        se = math.sqrt((n * (n + 1) / 12.0 - tie_term) * (1.0 / sizes[i] + 1.0 / sizes[j]))
        z = abs(mean_ranks[i] - mean_ranks[j]) / se
        p = math.erfc(z / math.sqrt(2.0))
        out[i, j] = out[j, i] = min(1.0, p * len(pairs))
    return out


def exact_wilcoxon_p(differences: np.ndarray) -> float:
    """Exact two-sided signed-rank p by enumerating all 2^n sign patterns (no ties, no zeros)."""
    magnitudes = scipy_stats.rankdata(np.abs(differences))
    observed = magnitudes[differences > 0].sum()
    n = len(differences)
    totals = [sum(r for r, s in zip(magnitudes, signs) if s) for signs in itertools.product([0, 1], repeat=n)]
    mean = n * (n + 1) / 4.0
    extreme = sum(1 for t in totals if abs(t - mean) >= abs(observed - mean) - 1e-12)
    return extreme / len(totals)


def tidy(wide: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    long = wide.rename_axis("image").reset_index().melt(id_vars="image", var_name="model", value_name=metric)
    return long[["model", "image", metric]]


def random_wide(seed: int, n: int = 30, shift: dict | None = None, models: str = "ABCD") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.6, 0.9, n)
    shift = shift or {}
    frame = pd.DataFrame({m: base + shift.get(m, 0.0) + rng.normal(0, 0.03, n) for m in models})
    frame.index = [f"img{i:03d}" for i in range(n)]
    return frame


def upper(matrix: pd.DataFrame) -> np.ndarray:
    return matrix.to_numpy()[np.triu_indices(len(matrix), 1)]


# ---------------------------------------------------------------- omnibus tests

def test_friedman_matches_r_rounding_times():
    wide = pd.DataFrame(ROUNDING_TIMES, columns=["round_out", "narrow_angle", "wide_angle"])
    result = friedman(wide)
    assert result.statistic == pytest.approx(11.143, abs=5e-4)
    assert result.p_value == pytest.approx(0.003805, abs=5e-7)


def test_friedman_two_models_equals_sign_count_formula():
    # k = 2 without ties: chi2 = (n_plus - n_minus)^2 / n; with 8 of 10 images favouring A: 3.6.
    a = np.arange(10, dtype=float)
    b = a + np.array([-1, -1, -1, -1, -1, -1, -1, -1, 1, 1], dtype=float) * 0.5
    result = friedman(pd.DataFrame({"A": a, "B": b}))
    assert result.statistic == pytest.approx(3.6)
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(3.6 / 2)))


def test_friedman_all_tied_is_nan_with_note():
    result = friedman(pd.DataFrame({"A": [1.0, 2.0, 3.0], "B": [1.0, 2.0, 3.0]}))
    assert np.isnan(result.statistic) and np.isnan(result.p_value) and "tie" in result.note


def test_shapiro_and_levene_agree_with_scipy_and_handle_constant_groups():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20)
    assert shapiro(x)[:2] == pytest.approx(tuple(scipy_stats.shapiro(x)))
    constant = shapiro(np.full(5, 0.8))
    assert np.isnan(constant.p_value) and "identical" in constant.note
    wide = pd.DataFrame({"A": x, "B": 3 * rng.normal(size=20)})
    assert levene(wide)[:2] == pytest.approx(tuple(scipy_stats.levene(wide["A"], wide["B"])))
    assert np.isnan(levene(pd.DataFrame({"A": [1.0] * 4, "B": [2.0] * 4})).statistic)


def test_omnibus_rows_and_columns():
    table = omnibus(random_wide(0, n=10, models="ABC"), "dice")
    assert list(table.columns[:5]) == ["metric", "test", "group", "statistic", "p_value"]
    assert table[["test", "group"]].values.tolist() == [
        ["shapiro", "A"], ["shapiro", "B"], ["shapiro", "C"], ["levene", "all"], ["friedman", "all"]]
    assert (table["n"] == 10).all()


# ---------------------------------------------------------------- post hoc tests

def test_dunn_bonferroni_matches_r_reference_on_exercise_data():
    # Bonferroni from the published Holm values: the three raw p-values are the Holm
    # values divided by 3, 2 and 1 (smallest first; no running-max effect here), times 3.
    wide = pd.DataFrame(PULSE)
    result = dunn_bonferroni(wide)
    assert list(result.index) == list(result.columns) == ["rest", "walking", "running"]
    assert result.loc["rest", "running"] == pytest.approx(9.570998e-09, rel=1e-5)
    assert result.loc["running", "walking"] == pytest.approx(1.873208e-04 / 2 * 3, rel=1e-5)
    assert result.loc["rest", "walking"] == pytest.approx(4.390066e-02 * 3, rel=1e-5)
    assert np.allclose(np.diag(result), 1.0)
    assert np.allclose(result.to_numpy(), result.to_numpy().T)
    groups = [np.asarray(PULSE[name], dtype=float) for name in ("rest", "walking", "running")]
    assert np.allclose(result.to_numpy(), hand_dunn_bonferroni(groups), rtol=1e-9, atol=0)


def test_dunn_bonferroni_matches_hand_formula_with_ties():
    wide = pd.DataFrame({"u": [0.9, 0.8, 0.85, 0.9, 0.7], "d": [0.8, 0.8, 0.6, 0.7, 0.7],
                         "s": [0.5, 0.6, 0.6, 0.4, 0.55], "m": [0.85, 0.7, 0.8, 0.9, 0.6]})
    expected = hand_dunn_bonferroni([wide[c].to_numpy() for c in wide.columns])
    assert np.allclose(dunn_bonferroni(wide).to_numpy(), expected, rtol=1e-9, atol=0)


def test_conover_friedman_holm_matches_published_values():
    names = list("abcdefg")
    result = conover_friedman(pd.DataFrame(BLOCKS_7, columns=names))
    iu = np.triu_indices(7, 1)
    expected = np.ones((7, 7))
    expected[iu] = hand_holm(CONOVER_7_UNADJUSTED[iu])
    expected.T[iu] = expected[iu]
    assert list(result.columns) == names
    assert np.allclose(result.to_numpy(), expected, rtol=1e-6, atol=1e-9)
    assert result.loc["a", "f"] == pytest.approx(min(1.0, 21 * 0.018160199), rel=1e-6)


def test_wilcoxon_holm_matches_exact_enumeration():
    a = np.array([10.0, 20, 30, 40, 50, 60])
    wide = pd.DataFrame({
        "A": a,
        "B": a - np.array([1.0, 2, 3, 4, 5, 6]),        # A > B on every image: p = 2 / 64
        "C": a - np.array([0.5, -2.25, 3.75, -1.1, 5.3, 8.05]),  # no zero or tied |differences| in any pair
    })
    raw = [exact_wilcoxon_p((wide[x] - wide[y]).to_numpy()) for x, y in [("A", "B"), ("A", "C"), ("B", "C")]]
    assert raw[0] == pytest.approx(2 / 64)
    expected = hand_holm(raw)
    result = wilcoxon_holm(wide)
    assert result.loc["A", "B"] == pytest.approx(expected[0])
    assert result.loc["A", "C"] == pytest.approx(expected[1])
    assert result.loc["B", "C"] == pytest.approx(expected[2])


def test_holm_helper_matches_hand_version_and_keeps_nan():
    p = [0.01, 0.04, 0.03, 0.5]
    assert np.allclose(holm(p), hand_holm(p))
    with_nan = holm([0.01, np.nan, 0.02])
    assert np.isnan(with_nan[1]) and np.allclose(with_nan[[0, 2]], [0.02, 0.02])


@pytest.mark.parametrize("test", [dunn_bonferroni, conover_friedman, wilcoxon_holm])
def test_clearly_better_model_differs_from_all_others(test):
    wide = random_wide(7, n=30, shift={"B": 0.15})
    matrix = test(wide)
    others = [m for m in wide.columns if m != "B"]
    assert all(matrix.loc["B", m] < 1e-3 for m in others)
    assert np.allclose(np.diag(matrix), 1.0)


@pytest.mark.parametrize("test", [dunn_bonferroni, conover_friedman, wilcoxon_holm])
def test_equivalent_models_give_large_p_values(test):
    wide = random_wide(3, n=30)
    assert friedman(wide).p_value > 0.5
    assert (upper(test(wide)) > 0.2).all()


def test_bootstrap_median_difference_is_seeded_and_exact_for_constant_shift():
    wide = random_wide(1, n=25, shift={"A": 0.0}, models="AB")
    wide["C"] = wide["A"] - 0.1
    table = bootstrap_median_difference(wide, n_boot=500, seed=4)
    assert list(table.columns) == ["model_a", "model_b", "median_difference", "ci_low", "ci_high", "n"]
    assert table[["model_a", "model_b"]].values.tolist() == [["A", "B"], ["A", "C"], ["B", "C"]]
    shift = table[(table.model_a == "A") & (table.model_b == "C")].iloc[0]
    assert shift.median_difference == pytest.approx(0.1)
    assert shift.ci_low == pytest.approx(0.1) and shift.ci_high == pytest.approx(0.1)
    assert (table.ci_low <= table.median_difference).all() and (table.median_difference <= table.ci_high).all()
    assert (table.n == 25).all()
    again = bootstrap_median_difference(wide, n_boot=500, seed=4)
    pd.testing.assert_frame_equal(table, again)
    other = bootstrap_median_difference(wide, n_boot=500, seed=5)
    assert not np.allclose(other.ci_low.iloc[0], table.ci_low.iloc[0])
    with pytest.raises(StatsError):
        bootstrap_median_difference(wide, n_boot=0)


# ---------------------------------------------------------------- analyse

def test_analyse_outputs_and_files(tmp_path):
    wide = random_wide(7, n=12, shift={"B": 0.15})
    frame = tidy(wide).assign(jaccard=lambda f: f["dice"] / (2 - f["dice"]))
    result = stats.analyse(frame, ["dice", "jaccard"], tmp_path, n_boot=200)
    tests = pd.read_csv(tmp_path / "tests.csv")
    assert list(tests.columns[:5]) == ["metric", "test", "group", "statistic", "p_value"]
    assert len(tests) == 2 * (4 + 2)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary.columns) == ["metric", "model", "mean", "sd", "median", "n"]
    row = summary[(summary.metric == "dice") & (summary.model == "B")].iloc[0]
    assert row["sd"] == pytest.approx(np.std(wide["B"], ddof=1))
    assert row["mean"] == pytest.approx(wide["B"].mean()) and row["n"] == 12
    for test in ("dunn", "conover", "wilcoxon"):
        matrix = pd.read_csv(tmp_path / f"{test}_dice.csv")
        assert list(matrix.columns) == ["model", "A", "B", "C", "D"]
        assert matrix["model"].tolist() == ["A", "B", "C", "D"]
        assert np.allclose(np.diag(matrix.set_index("model").to_numpy()), 1.0)
        pd.testing.assert_frame_equal(matrix.set_index("model"), result["posthoc"][test]["dice"],
                                      check_names=False, check_exact=False)
    differences = pd.read_csv(tmp_path / "differences_jaccard.csv")
    assert len(differences) == 6
    notes = (tmp_path / "notes.txt").read_text()
    assert "independent" in notes and "pairing" in notes
    assert result["figure_test"] == "dunn"


def test_analyse_refuses_to_overwrite_and_writes_nothing(tmp_path):
    frame = tidy(random_wide(0, n=5))
    stats.analyse(frame, ["dice"], tmp_path, n_boot=50)
    before = (tmp_path / "tests.csv").read_text()
    with pytest.raises(Exception, match="overwrite"):
        stats.analyse(frame.assign(dice=frame["dice"] + 1), ["dice"], tmp_path, n_boot=50)
    assert (tmp_path / "tests.csv").read_text() == before
    stats.analyse(frame.assign(dice=frame["dice"] + 1), ["dice"], tmp_path, n_boot=50, overwrite=True)
    assert (tmp_path / "tests.csv").read_text() != before


def test_constant_metric_gives_nan_for_that_metric_only(tmp_path):
    frame = tidy(random_wide(2, n=8)).assign(pixel_accuracy=1.0)
    result = stats.analyse(frame, ["dice", "pixel_accuracy"], tmp_path, n_boot=50)
    tests = result["tests"]
    constant = tests[tests.metric == "pixel_accuracy"]
    assert constant[["statistic", "p_value"]].isna().all().all()
    assert constant["note"].str.len().gt(0).all()
    assert tests[tests.metric == "dice"][["statistic", "p_value"]].notna().all().all()
    matrix = pd.read_csv(tmp_path / "dunn_pixel_accuracy.csv").set_index("model")
    assert np.isnan(upper(matrix)).all() and np.allclose(np.diag(matrix), 1.0)
    assert "pixel_accuracy: all values identical" in (tmp_path / "notes.txt").read_text()


def sweep_frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A sweep-like table: the score encodes the threshold, so the kept rows can be checked."""
    rows = []
    for model in ("unet", "segnet"):
        for image in range(5):
            for threshold in np.round(np.arange(0.0, 1.0001, 0.05), 2):
                rows.append((model, f"im{image}", threshold + 1e-9, threshold + image * 1e-3, 1 - threshold))
    per_image = pd.DataFrame(rows, columns=["model", "image", "threshold", "dice", "pixel_accuracy"])
    optimal = pd.DataFrame([("unet", "dice", 0.45, 0.9, 0.1), ("unet", "pixel_accuracy", 0.5, 0.9, 0.1),
                            ("segnet", "dice", 0.15, 0.8, 0.1), ("segnet", "pixel_accuracy", 0.35, 0.8, 0.1)],
                           columns=["model", "metric", "threshold", "mean", "std"])
    return per_image, optimal


def test_at_optimal_keeps_each_models_optimal_threshold_per_metric(tmp_path):
    per_image, optimal = sweep_frame()
    optimal_csv = tmp_path / "optimal.csv"
    optimal.to_csv(optimal_csv, index=False)
    for at_optimal in (optimal, optimal_csv):
        summary = stats.analyse(per_image, ["dice", "pixel_accuracy"], at_optimal=at_optimal, n_boot=50)["summary"]
        means = summary.set_index(["metric", "model"])["mean"]
        assert means[("dice", "unet")] == pytest.approx(0.45 + 0.002)
        assert means[("dice", "segnet")] == pytest.approx(0.15 + 0.002)
        assert means[("pixel_accuracy", "unet")] == pytest.approx(0.5)
        assert means[("pixel_accuracy", "segnet")] == pytest.approx(0.65)
        assert (summary["n"] == 5).all()


def test_threshold_column_without_at_optimal():
    per_image, _ = sweep_frame()
    with pytest.raises(StatsError, match="--at-optimal"):
        stats.analyse(per_image, ["dice"])
    single = per_image[np.isclose(per_image["threshold"], 0.5)]
    assert stats.analyse(single, ["dice"], n_boot=20)["summary"]["n"].tolist() == [5, 5]


def test_at_optimal_missing_model_row_is_an_error():
    per_image, optimal = sweep_frame()
    with pytest.raises(StatsError, match="segnet"):
        stats.analyse(per_image, ["dice"], at_optimal=optimal[optimal.model != "segnet"])


def test_unpaired_images_are_dropped_and_reported():
    frame = tidy(random_wide(0, n=6))
    frame = frame[~((frame.model == "C") & frame.image.isin(["img001", "img004"]))]
    result = stats.analyse(frame, ["dice"], n_boot=20)
    assert (result["summary"]["n"] == 4).all()
    assert any("dropped 2 image(s)" in line and "img001" in line and "img004" in line for line in result["notes"])


def test_nan_values_are_reported_and_dropped_only_with_dropna():
    frame = tidy(random_wide(0, n=6))
    frame.loc[(frame.model == "B") & (frame.image == "img002"), "dice"] = np.nan
    with pytest.raises(StatsError, match=r"\(B, img002\)"):
        stats.analyse(frame, ["dice"])
    result = stats.analyse(frame, ["dice"], dropna=True, n_boot=20)
    assert (result["summary"]["n"] == 5).all()
    assert any("(B, img002)" in line for line in result["notes"])


@pytest.mark.parametrize("change, message", [
    (lambda f: f[f.model == "A"], "at least two models"),
    (lambda f: f[f.image.isin(["img000", "img001"])], "at least 3 paired images"),
    (lambda f: f.drop(columns="dice"), "missing metric column 'dice'"),
    (lambda f: f.assign(dice=f["dice"].astype(str).where(f.index != 0, "oops")), "not numeric"),
    (lambda f: f.drop(columns="image"), "missing column 'image'"),
    (lambda f: pd.concat([f, f.iloc[:1]]), "several rows"),
])
def test_bad_input_raises_one_line_stats_error(change, message):
    frame = tidy(random_wide(0, n=6))
    with pytest.raises(StatsError, match=message) as info:
        stats.analyse(change(frame), ["dice"])
    assert "\n" not in str(info.value)


def test_unknown_posthoc_name():
    with pytest.raises(StatsError, match="conover"):
        stats.analyse(tidy(random_wide(0, n=6)), ["dice"], posthoc="tukey")


def test_instance_study_per_image_ap_with_method_column(tmp_path):
    rng = np.random.default_rng(5)
    images = [f"set{i:02d}" for i in range(10)]
    ap_maskrcnn = rng.uniform(0.4, 0.8, 10)
    table = pd.DataFrame({
        "method": ["maskrcnn"] * 10 + ["sam_box"] * 10 + ["sam_box_point"] * 10,
        "image": images * 3,
        "ap": np.concatenate([ap_maskrcnn, ap_maskrcnn - 0.05 + rng.normal(0, 0.01, 10),
                              ap_maskrcnn + rng.normal(0, 0.05, 10)]),
    })
    result = stats.analyse(table, ["ap"], tmp_path, posthoc="wilcoxon", n_boot=100)
    assert result["summary"]["model"].tolist() == ["maskrcnn", "sam_box", "sam_box_point"]
    assert result["posthoc"]["wilcoxon"]["ap"].loc["maskrcnn", "sam_box"] < 0.05
    assert (tmp_path / "wilcoxon_ap.csv").is_file()
    assert any("method" in line for line in result["notes"])
