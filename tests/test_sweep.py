"""Threshold sweep: known answers, single pass == naive loop, CSV contract, combining, bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.imageio import write_labels, write_png
from keras_semseg.errors import SemsegError
from keras_semseg.sweep import (
    OPTIMAL_COLUMNS,
    PER_IMAGE_COLUMNS,
    SUMMARY_COLUMNS,
    TABLE1_COLUMNS,
    THRESHOLDS,
    confusion_counts,
    main,
    metrics_from_counts,
    run_sweep,
    summarize,
    sweep_model,
)

ROOT = Path(__file__).resolve().parents[1]

PROB_3 = np.array([[0.9, 0.2, 0.6], [0.4, 0.5, 0.1], [0.7, 0.3, 0.8]])
TRUTH_3 = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1]], bool)
# threshold: (tp, fp, fn, tn), dice, jaccard, pixel accuracy -- counted by hand
KNOWN_3 = {
    0.00: ((4, 5, 0, 0), 8 / 13, 4 / 9, 4 / 9),
    0.35: ((4, 2, 0, 3), 8 / 10, 4 / 6, 7 / 9),
    0.50: ((3, 1, 1, 4), 6 / 8, 3 / 5, 7 / 9),  # 0.5 itself is not > 0.5
    0.80: ((1, 0, 3, 5), 2 / 5, 1 / 4, 6 / 9),
    1.00: ((0, 0, 4, 5), 0.0, 0.0, 5 / 9),
}
PROB_4 = np.array([[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7], [0.8, 0.9, 1.0, 0.25], [0.55, 0.45, 0.35, 0.15]])
TRUTH_4 = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], bool)
KNOWN_4 = {
    0.00: ((9, 6, 0, 1), 18 / 24, 9 / 15, 10 / 16),
    0.30: ((7, 3, 2, 4), 14 / 19, 7 / 12, 11 / 16),
    0.50: ((6, 0, 3, 7), 12 / 15, 6 / 9, 13 / 16),
    0.99: ((1, 0, 8, 7), 2 / 10, 1 / 9, 8 / 16),
    1.00: ((0, 0, 9, 7), 0.0, 0.0, 7 / 16),
}


def naive_counts(prob, truth, thresholds):
    rows = []
    for t in thresholds:
        predicted = prob > prob.dtype.type(t)  # compared in the map's own dtype, as the library does
        rows.append((np.sum(predicted & truth), np.sum(predicted & ~truth), np.sum(~predicted & truth), np.sum(~predicted & ~truth)))
    return [np.array(column, np.int64) for column in zip(*rows)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("prob, truth, known", [(PROB_3, TRUTH_3, KNOWN_3), (PROB_4, TRUTH_4, KNOWN_4)], ids=["3x3", "4x4"])
def test_known_answers(prob, truth, known, dtype):
    thresholds = np.array(list(known))
    counts = confusion_counts(prob.astype(dtype), truth, thresholds)
    scores = metrics_from_counts(*counts)
    for i, (expected_counts, dice, jaccard, accuracy) in enumerate(known.values()):
        assert tuple(int(c[i]) for c in counts) == expected_counts
        assert scores["dice"][i] == pytest.approx(dice)
        assert scores["jaccard"][i] == pytest.approx(jaccard)
        assert scores["pixel_accuracy"][i] == pytest.approx(accuracy)


def test_known_answers_on_full_grid_match_naive():
    counts = confusion_counts(PROB_4, TRUTH_4)
    assert all(c.shape == (101,) and c.dtype == np.int64 for c in counts)
    assert all(np.array_equal(a, b) for a, b in zip(counts, naive_counts(PROB_4, TRUTH_4, THRESHOLDS)))
    assert np.all(counts[0] + counts[1] + counts[2] + counts[3] == 16)


def test_empty_truth_and_empty_prediction_score_one():
    scores = metrics_from_counts(*confusion_counts(np.zeros((3, 3)), np.zeros((3, 3), bool)))
    assert np.all(scores["dice"] == 1.0) and np.all(scores["jaccard"] == 1.0) and np.all(scores["pixel_accuracy"] == 1.0)
    # empty truth, cells predicted below 0.5: dice 0 there, 1 above
    scores = metrics_from_counts(*confusion_counts(np.full((2, 2), 0.5), np.zeros((2, 2), bool), [0.4, 0.5]))
    assert scores["dice"].tolist() == [0.0, 1.0] and scores["pixel_accuracy"].tolist() == [0.0, 1.0]


def _random_map(rng, shape, dtype):
    """Uniform values, a third of them exactly on the 0.01 grid (in ``dtype``), some one ulp either side."""
    prob = rng.random(shape)
    on_grid = (rng.integers(0, 101, shape) / 100).astype(dtype)
    pick = rng.random(shape)
    prob = np.where(pick < 0.35, on_grid, prob.astype(dtype))
    prob = np.where((pick >= 0.35) & (pick < 0.45), np.nextafter(on_grid, dtype(2)), prob)
    prob = np.where((pick >= 0.45) & (pick < 0.55), np.nextafter(on_grid, dtype(-1)), prob)
    return np.clip(prob, 0, 1).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_single_pass_equals_naive_loop(dtype):
    rng = np.random.default_rng(7)
    for _ in range(3):
        prob = _random_map(rng, (60, 70), dtype)
        truth = rng.random((60, 70)) < 0.4
        uneven_grid = np.array([0.0, 0.1, 0.22, 0.3, 0.38, 0.5, 0.6])  # within step/4 of an even grid
        for thresholds in (THRESHOLDS, np.linspace(0, 1, 1001), 0.3 + 0.002 * np.arange(50), uneven_grid, rng.random(9), np.array([0.7, 0.2, 0.2, 0.45])):
            counts = confusion_counts(prob, truth, thresholds)
            expected = naive_counts(prob, truth, thresholds)
            assert all(np.array_equal(a, b) for a, b in zip(counts, expected)), thresholds[:4]
            explicit = naive_counts(prob, truth, [prob.dtype.type(t) for t in thresholds])
            assert all(np.array_equal(a, b) for a, b in zip(counts, explicit))


def test_values_outside_the_grid_and_errors():
    rng = np.random.default_rng(1)
    prob = (rng.standard_normal((40, 40)) * 1e4).astype(np.float32)
    truth = rng.random((40, 40)) < 0.5
    assert all(np.array_equal(a, b) for a, b in zip(confusion_counts(prob, truth), naive_counts(prob, truth, THRESHOLDS)))
    with pytest.raises(SemsegError, match="NaN"):
        confusion_counts(np.array([[np.nan, 0.5]]), np.array([[True, False]]))
    with pytest.raises(SemsegError, match="shape"):
        confusion_counts(np.zeros((2, 2)), np.zeros((2, 3), bool))


def test_optimum_takes_lowest_threshold_among_exact_ties():
    rows = []
    for image, values in (("a", [0.5, 0.8, 0.8, 0.6]), ("b", [0.3, 0.6, 0.6, 0.6])):
        for t, v in zip([0.1, 0.2, 0.3, 0.4], values):
            rows.append({"model": "m", "image": image, "threshold": t, "dice": v, "jaccard": v / 2, "pixel_accuracy": 1 - t})
    summary, optimal, table1 = summarize(pd.DataFrame(rows))
    best = optimal.set_index("metric")
    assert best.loc["dice", "threshold"] == 0.2 and best.loc["dice", "mean"] == pytest.approx(0.7)
    assert best.loc["jaccard", "threshold"] == 0.2
    assert best.loc["pixel_accuracy", "threshold"] == 0.1
    assert best.loc["dice", "std"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert table1.loc[0, "threshold"] == 0.2 and table1.loc[0, "pixel_accuracy_mean"] == pytest.approx(0.8)
    assert list(summary.columns) == SUMMARY_COLUMNS and len(summary) == 4


def _write_case(root: Path, rng, names=("img_a", "img_b", "img_c"), shape=(12, 16), mask_style="binary", dtype=np.float32):
    probs, masks = root / "probs", root / "masks"
    probs.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    truths = {}
    for i, name in enumerate(names):
        truth = rng.random(shape) < 0.4
        prob = np.clip(truth * 0.6 + rng.random(shape) * 0.5, 0, 1).astype(dtype)
        np.save(probs / f"{name}.npy", prob)
        if mask_style == "binary":
            write_png(masks / f"{name}.png", (truth * 255).astype(np.uint8))
        else:
            write_labels(masks / f"{name}.tif", (truth * (i + 3)).astype(np.uint16))
        truths[name] = (prob, truth)
    return probs, masks, truths


def test_sweep_model_matches_direct_counts(tmp_path):
    rng = np.random.default_rng(3)
    probs, masks, truths = _write_case(tmp_path, rng, mask_style="labels")
    table = sweep_model(probs, masks, "unet")
    assert list(table.columns) == PER_IMAGE_COLUMNS and len(table) == 3 * 101
    for name, (prob, truth) in truths.items():
        expected = metrics_from_counts(*naive_counts(prob, truth, THRESHOLDS))
        rows = table[table["image"] == name]
        for metric in ("dice", "jaccard", "pixel_accuracy"):
            np.testing.assert_array_equal(rows[metric].to_numpy(), expected[metric])


def test_run_sweep_csv_contract(tmp_path):
    rng = np.random.default_rng(4)
    probs, masks, _ = _write_case(tmp_path, rng)
    out = tmp_path / "sweep"
    tables = run_sweep(probs, masks, "unet", out)
    columns = {"per_image": PER_IMAGE_COLUMNS, "summary": SUMMARY_COLUMNS, "optimal": OPTIMAL_COLUMNS, "table1": TABLE1_COLUMNS}
    for name, expected in columns.items():
        text = (out / f"{name}.csv").read_text().splitlines()
        assert text[0] == ",".join(expected)
    per_image = (out / "per_image.csv").read_text().splitlines()
    assert len(per_image) == 1 + 3 * 101
    assert [line.split(",")[2] for line in per_image[1:102]] == [f"{t:.2f}" for t in THRESHOLDS]
    raw = pd.read_csv(out / "summary.csv", dtype=str)
    assert raw["threshold"].iloc[0] == "0.00" and raw["threshold"].iloc[-1] == "1.00"
    per = tables["per_image"]
    at = per[per["threshold"] == 0.5]["dice"]
    row = tables["summary"].set_index("threshold").loc[0.5]
    assert row["dice_mean"] == pytest.approx(at.mean()) and row["dice_std"] == pytest.approx(at.std(ddof=1))
    assert len(tables["optimal"]) == 3 and len(tables["table1"]) == 1
    dice_best = tables["optimal"].set_index("metric").loc["dice", "threshold"]
    assert tables["table1"].loc[0, "threshold"] == dice_best
    assert not list(out.glob("*.partial"))


def test_combine_models_and_replace(tmp_path):
    rng = np.random.default_rng(5)
    a_probs, masks, _ = _write_case(tmp_path / "a", rng)
    b_probs, _, _ = _write_case(tmp_path / "b", rng)
    out = tmp_path / "sweep"
    run_sweep(a_probs, masks, "unet", out)
    run_sweep(b_probs, masks, "segnet", out)
    per_image = pd.read_csv(out / "per_image.csv")
    assert list(dict.fromkeys(per_image["model"])) == ["unet", "segnet"] and len(per_image) == 2 * 3 * 101
    assert set(pd.read_csv(out / "table1.csv")["model"]) == {"unet", "segnet"}
    before = (out / "per_image.csv").read_text()
    with pytest.raises(SemsegError, match="--overwrite"):
        run_sweep(b_probs, masks, "unet", out)
    assert (out / "per_image.csv").read_text() == before
    run_sweep(b_probs, masks, "unet", out, overwrite=True)
    after = pd.read_csv(out / "per_image.csv")
    old = per_image.set_index(["model", "image", "threshold"])
    new = after.set_index(["model", "image", "threshold"])
    pd.testing.assert_frame_equal(new.loc["segnet"], old.loc["segnet"])
    np.testing.assert_array_equal(new.loc["unet"].to_numpy(), old.loc["segnet"].to_numpy())
    assert list(dict.fromkeys(after["model"])) == ["unet", "segnet"]
    table1 = pd.read_csv(out / "table1.csv").set_index("model")
    assert table1.loc["unet", "dice_mean"] == table1.loc["segnet", "dice_mean"]


def _assert_fails(tmp_path, probs, masks, match, capsys):
    out = tmp_path / "out"
    with pytest.raises(SemsegError, match=match):
        run_sweep(probs, masks, "unet", out)
    assert main(["--probs", str(probs), "--masks", str(masks), "--model", "unet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not out.exists() or not any(out.iterdir())
    return err[0]


def test_bad_input_stems_do_not_match(tmp_path, capsys):
    probs, masks, _ = _write_case(tmp_path, np.random.default_rng(0))
    np.save(probs / "extra_map.npy", np.zeros((12, 16), np.float32))
    write_png(masks / "extra_mask.png", np.zeros((12, 16), np.uint8))
    message = _assert_fails(tmp_path, probs, masks, "stems must match", capsys)
    assert "extra_map" in message and "extra_mask" in message


def test_bad_input_shape_mismatch(tmp_path, capsys):
    probs, masks, _ = _write_case(tmp_path, np.random.default_rng(0))
    np.save(probs / "img_b.npy", np.zeros((12, 15), np.float32))
    message = _assert_fails(tmp_path, probs, masks, "shape", capsys)
    assert "img_b.npy" in message and "img_b.png" in message


@pytest.mark.parametrize("value, match", [(1.5, "outside 0..1"), (-0.1, "outside 0..1"), (np.nan, "NaN")])
def test_bad_input_map_values(tmp_path, capsys, value, match):
    probs, masks, _ = _write_case(tmp_path, np.random.default_rng(0))
    prob = np.load(probs / "img_c.npy")
    prob[3, 4] = value
    np.save(probs / "img_c.npy", prob)
    assert "img_c.npy" in _assert_fails(tmp_path, probs, masks, match, capsys)


def test_bad_input_map_not_2d(tmp_path, capsys):
    probs, masks, _ = _write_case(tmp_path, np.random.default_rng(0))
    np.save(probs / "img_a.npy", np.zeros((12, 16, 2), np.float32))
    assert "img_a.npy" in _assert_fails(tmp_path, probs, masks, "H x W", capsys)


def test_bad_input_mask_not_binary_or_labels(tmp_path, capsys):
    probs, masks, _ = _write_case(tmp_path, np.random.default_rng(0))
    colour = np.zeros((12, 16, 3), np.uint8)
    colour[2:5, 2:5] = (255, 0, 0)
    write_png(masks / "img_a.png", colour)
    assert "img_a.png" in _assert_fails(tmp_path, probs, masks, "colour", capsys)


def test_bad_input_empty_folder(tmp_path, capsys):
    probs, masks = tmp_path / "probs", tmp_path / "masks"
    probs.mkdir()
    masks.mkdir()
    assert "probs" in _assert_fails(tmp_path, probs, masks, "no probability map files", capsys)
    assert "not found" in _assert_fails(tmp_path, tmp_path / "missing", masks, "not found", capsys)


def test_existing_outputs_need_overwrite(tmp_path):
    probs, masks, _ = _write_case(tmp_path, np.random.default_rng(0))
    out = tmp_path / "out"
    out.mkdir()
    (out / "table1.csv").write_text("old\n")
    with pytest.raises(Exception, match="overwrite"):
        run_sweep(probs, masks, "unet", out)
    assert (out / "table1.csv").read_text() == "old\n"


def test_cli_runs_without_loading_a_framework(tmp_path):
    probs, masks, _ = _write_case(tmp_path, np.random.default_rng(0))
    out = tmp_path / "out"
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['sweep', '--probs', {str(probs)!r}, '--masks', {str(masks)!r}, '--model', 'unet', '--out', {str(out)!r}]\n"
        "try:\n    runpy.run_module('keras_semseg.sweep', run_name='__main__')\n"
        "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        "print('FRAMEWORKS', [m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "FRAMEWORKS []" in result.stdout
    assert "unet: 3 images" in result.stdout
    assert (out / "table1.csv").is_file()


def test_float16_maps_with_signed_zeros_and_values_outside_0_1():
    rng = np.random.default_rng(3)
    prob = rng.normal(0.5, 0.6, (50, 40)).astype(np.float16)
    prob[rng.random(prob.shape) < 0.1] = np.float16(-0.0)
    prob[rng.random(prob.shape) < 0.1] = np.float16(0.0)
    truth = rng.random(prob.shape) < 0.5
    for thresholds in (THRESHOLDS, np.array([-0.5, 0.0, 1.2, 0.3])):
        counts = confusion_counts(prob, truth, thresholds)
        assert all(np.array_equal(a, b) for a, b in zip(counts, naive_counts(prob, truth, thresholds)))


def test_masks_are_read_as_booleans_without_labelling(tmp_path, monkeypatch):
    import scipy.ndimage

    from keras_semseg.sweep import load_truth

    def no_labelling(*args, **kwargs):
        raise AssertionError("the sweep must not label connected components")

    monkeypatch.setattr(scipy.ndimage, "label", no_labelling)
    mask = np.zeros((6, 7), np.uint8)
    mask[1:3, 2:5] = 255
    write_png(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(load_truth(tmp_path / "m.png"), mask > 0)
    labels = np.zeros((6, 7), np.uint16)
    labels[0, 0], labels[4:6, 4:6] = 3, 700
    write_png(tmp_path / "l.png", labels)
    np.testing.assert_array_equal(load_truth(tmp_path / "l.png"), labels > 0)
