"""The stats command line (python -m stats / mscseg-stats) and Figure 3."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import stats
from stats import StatsError
from stats.__main__ import main
from stats.plots import figure3, significance_label

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def per_image_table(n_images: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.6, 0.85, n_images)
    rows = []
    for model, shift in (("unet", 0.1), ("deeplabv3plus", 0.0), ("segnet", -0.1), ("maskrcnn", 0.0)):
        dice = np.clip(base + shift + rng.normal(0, 0.02, n_images), 0, 1)
        for i in range(n_images):
            rows.append((model, f"{i:03d}", dice[i], dice[i] / (2 - dice[i]), 0.5 + dice[i] / 2, "x"))
    return pd.DataFrame(rows, columns=["model", "image", "dice", "jaccard", "pixel_accuracy", "comment"])


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_significance_labels():
    assert [significance_label(p) for p in (0.00005, 0.0005, 0.005, 0.03, 0.05, 0.5, float("nan"))] == [
        "****", "***", "**", "*", "ns", "ns", "n/a"]


def test_cli_writes_tables_and_figure(tmp_path, capsys):
    csv = tmp_path / "per_image.csv"
    per_image_table().to_csv(csv, index=False)
    out = tmp_path / "stats"
    code, stdout, stderr = run_cli(
        [csv, "--metrics", "dice", "jaccard", "pixel_accuracy", "--out", out, "--posthoc", "conover", "--n-boot", 100],
        capsys)
    assert code == 0, stderr
    assert "dice: Friedman" in stdout
    for metric in ("dice", "jaccard", "pixel_accuracy"):
        for prefix in ("dunn", "conover", "wilcoxon", "differences"):
            assert (out / f"{prefix}_{metric}.csv").is_file()
    assert (out / "fig3.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "fig3.pdf").read_bytes()[:5] == b"%PDF-"
    tests = pd.read_csv(out / "tests.csv", dtype={"group": str})
    assert set(tests["test"]) == {"shapiro", "levene", "friedman"}
    assert (tests[tests.test == "friedman"]["p_value"] < 0.001).all()
    assert "conover" in (out / "notes.txt").read_text().split("Figure 3 brackets:")[1]

    code, _, stderr = run_cli([csv, "--metrics", "dice", "--out", out], capsys)
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error: ") and "--overwrite" in stderr
    code, _, _ = run_cli([csv, "--metrics", "dice", "--out", out, "--overwrite", "--no-figure"], capsys)
    assert code == 0


def test_cli_default_metrics_and_no_figure(tmp_path, capsys):
    csv = tmp_path / "per_image.csv"
    per_image_table().to_csv(csv, index=False)
    out = tmp_path / "stats"
    code, _, stderr = run_cli([csv, "--out", out, "--no-figure", "--n-boot", 50], capsys)
    assert code == 0, stderr
    assert not (out / "fig3.png").exists()
    assert sorted(pd.read_csv(out / "summary.csv")["metric"].unique()) == ["dice", "jaccard", "pixel_accuracy"]


def test_cli_at_optimal(tmp_path, capsys):
    table = per_image_table()
    swept = pd.concat([table.assign(threshold=t, dice=table["dice"] - abs(t - 0.4)) for t in (0.3, 0.4, 0.5)])
    csv, optimal_csv = tmp_path / "per_image.csv", tmp_path / "optimal.csv"
    swept.to_csv(csv, index=False)
    models = table["model"].unique()
    pd.DataFrame({"model": models, "metric": "dice", "threshold": 0.4, "mean": 0.0, "std": 0.0}).to_csv(
        optimal_csv, index=False)
    out = tmp_path / "stats"
    code, _, stderr = run_cli([csv, "--metrics", "dice", "--out", out], capsys)
    assert code == 2 and "--at-optimal" in stderr and stderr.count("\n") == 1
    assert not out.exists()
    code, _, stderr = run_cli([csv, "--metrics", "dice", "--out", out, "--at-optimal", optimal_csv,
                               "--no-figure", "--n-boot", 50], capsys)
    assert code == 0, stderr
    summary = pd.read_csv(out / "summary.csv")
    expected = table.groupby("model", sort=False)["dice"].mean()
    assert np.allclose(summary.set_index("model")["mean"].loc[expected.index], expected)
    code, _, stderr = run_cli([csv, "--metrics", "jaccard", "--out", tmp_path / "o2", "--at-optimal", optimal_csv],
                              capsys)
    assert code == 2 and stderr.startswith(f"error: {optimal_csv}: ")


@pytest.mark.parametrize("change, message", [
    (lambda f: f[f.model == "unet"], "at least two models"),
    (lambda f: f[f.image.isin(["000", "001"])], "at least 3 paired images"),
    (lambda f: f.assign(dice=f["dice"].where(f.index != 3)), "--dropna"),
    (lambda f: f.assign(dice="high"), "not numeric"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, change, message):
    csv = tmp_path / "per_image.csv"
    change(per_image_table()).to_csv(csv, index=False)
    out = tmp_path / "stats"
    code, stdout, stderr = run_cli([csv, "--metrics", "dice", "--out", out], capsys)
    assert code == 2
    assert stderr.startswith(f"error: {csv}: ") and stderr.count("\n") == 1 and message in stderr
    assert not out.exists()


def test_cli_usage_errors_are_one_line(tmp_path, capsys):
    code, _, stderr = run_cli([tmp_path / "x.csv", "--out", tmp_path / "o", "--posthoc", "tukey"], capsys)
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error: ")
    code, _, stderr = run_cli([tmp_path / "missing.csv", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "not found" in stderr and stderr.count("\n") == 1


def test_python_dash_m_exit_status(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    result = subprocess.run([sys.executable, "-m", "stats", str(empty), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {empty}: ")


def test_import_loads_no_framework_or_matplotlib():
    code = ("import sys, stats, stats.tests, stats.posthoc, stats.plots, stats.__main__; "
            "bad = [m for m in ('tensorflow', 'torch', 'matplotlib', 'scikit_posthocs') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_figure3_from_folder_and_from_matrices(tmp_path):
    table = per_image_table(n_images=6)
    result = stats.analyse(table, ["dice"], tmp_path / "s", n_boot=50)
    from_folder = figure3(tmp_path / "s" / "values.csv", tmp_path / "s", ["dice"], tmp_path / "a",
                          test="wilcoxon")
    assert [p.name for p in from_folder] == ["a.png", "a.pdf"]
    assert from_folder[0].read_bytes()[:8] == PNG_MAGIC
    from_dict = figure3(table, result["posthoc"], ["dice"], tmp_path / "b", kind="violin")
    assert from_dict[0].stat().st_size > 1000
    with pytest.raises(Exception, match="overwrite"):
        figure3(table, result["posthoc"], ["dice"], tmp_path / "b")
    with pytest.raises(StatsError, match="no dunn post hoc matrix"):
        figure3(table, result["posthoc"]["dunn"], ["pixel_accuracy"], tmp_path / "c")
