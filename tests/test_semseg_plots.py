"""Figures 1, 2 and 4 of the semantic study, made from tiny files written here."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from data.synthetic import generate
from keras_semseg.errors import SemsegError
from keras_semseg.plots import figure1, figure2, figure4, main
from keras_semseg.sweep import THRESHOLDS, summarize

MODELS = ("unet", "segnet")


def _assert_written(paths, stem):
    assert [p.name for p in paths] == [f"{stem.name}.png", f"{stem.name}.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[0].stat().st_size > 1000
    assert paths[1].read_bytes()[:5] == b"%PDF-" and paths[1].stat().st_size > 1000
    assert not list(stem.parent.glob("*.partial"))


def _write_history(path, epochs=5, validation=True):
    epoch = np.arange(1, epochs + 1)
    frame = pd.DataFrame({"epoch": epoch, "loss": 1 / epoch, "pixel_accuracy": 1 - 0.5 / epoch, "time_s": epoch * 1.5})
    if validation:
        frame["val_loss"] = 1.2 / epoch
        frame["val_pixel_accuracy"] = 1 - 0.6 / epoch
    frame.to_csv(path, index=False)
    return path


def _write_sweep_tables(folder):
    rng = np.random.default_rng(0)
    rows = []
    for model in MODELS:
        for image in ("a", "b", "c"):
            peak = rng.uniform(0.3, 0.6)
            dice = 0.9 - (THRESHOLDS - peak) ** 2 + rng.normal(0, 0.01)
            rows.append(pd.DataFrame({"model": model, "image": image, "threshold": THRESHOLDS, "dice": dice,
                                      "jaccard": dice / (2 - dice), "pixel_accuracy": 0.95 - (THRESHOLDS - 0.5) ** 2}))
    summary, optimal, table1 = summarize(pd.concat(rows, ignore_index=True))
    paths = {}
    for name, frame in (("summary", summary), ("optimal", optimal), ("table1", table1)):
        paths[name] = folder / f"{name}.csv"
        frame.to_csv(paths[name], index=False, float_format=None)
    return paths


def test_figure1(tmp_path):
    histories = {"unet": _write_history(tmp_path / "unet.csv"), "segnet": _write_history(tmp_path / "segnet.csv", validation=False)}
    stem = tmp_path / "figures" / "fig1"
    _assert_written(figure1(histories, stem), stem)
    with pytest.raises(Exception, match="overwrite"):
        figure1(histories, stem)
    _assert_written(figure1(histories, stem, overwrite=True), stem)


def test_figure1_bad_history(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"epoch": [1], "loss": [0.5]}).to_csv(bad, index=False)
    with pytest.raises(SemsegError, match="bad.csv: missing column"):
        figure1({"unet": bad}, tmp_path / "fig1")
    assert not list(tmp_path.glob("fig1*"))


def test_figure2(tmp_path):
    paths = _write_sweep_tables(tmp_path)
    stem = tmp_path / "fig2"
    _assert_written(figure2(paths["summary"], paths["optimal"], stem), stem)


def test_figure2_missing_optimum(tmp_path):
    paths = _write_sweep_tables(tmp_path)
    optimal = pd.read_csv(paths["optimal"])
    optimal[~((optimal["model"] == "segnet") & (optimal["metric"] == "jaccard"))].to_csv(paths["optimal"], index=False)
    with pytest.raises(SemsegError, match="segnet"):
        figure2(paths["summary"], paths["optimal"], tmp_path / "fig2")


def test_figure4_two_fake_models(tmp_path):
    samples = generate(3, 32, "sparse", 0)
    rng = np.random.default_rng(1)
    probs_dirs = {}
    for model in MODELS:
        folder = tmp_path / model
        folder.mkdir()
        for sample in samples:
            noisy = np.clip(sample.mask * 0.7 + rng.random(sample.shape) * 0.4, 0, 1).astype(np.float32)
            np.save(folder / f"{sample.name}.npy", noisy)
        probs_dirs[model] = folder
    table1 = _write_sweep_tables(tmp_path)["table1"]
    stem = tmp_path / "fig4"
    _assert_written(figure4(samples, probs_dirs, table1, stem, n_images=2), stem)

    with pytest.raises(SemsegError, match="no row for model 'deeplab'"):
        figure4(samples, {**probs_dirs, "deeplab": tmp_path / "unet"}, table1, tmp_path / "other")
    (tmp_path / "segnet" / f"{samples[0].name}.npy").unlink()
    with pytest.raises(SemsegError, match="probability map not found"):
        figure4(samples, probs_dirs, table1, tmp_path / "other")
    assert not list(tmp_path.glob("other*"))


def test_cli_and_no_pyplot(tmp_path, capsys):
    history = _write_history(tmp_path / "unet.csv", epochs=3)
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    assert main(["figure1", "--history", f"unet={history}", "--out", str(tmp_path / "f1")]) == 0
    assert (tmp_path / "f1.png").is_file() and (tmp_path / "f1.pdf").is_file()
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded
    assert main(["figure1", "--history", f"unet={history}", "--out", str(tmp_path / "f1")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
