"""mscseg.report: one self-contained HTML page from a results folder's files."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mscseg.config import load_config
from mscseg.errors import RunError
from mscseg.report import csv_files, main, render_report, table1_comparison, write_report

PNG_1x1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def fake_results(root: Path, preset: str = "tiny") -> Path:
    """A results folder with the files the report reads (numbers made up)."""
    settings = load_config(preset)
    (root / "semantic" / "sweep").mkdir(parents=True)
    (root / "semantic" / "stats").mkdir(parents=True)
    (root / "instance" / "stats").mkdir(parents=True)
    (root / "figures").mkdir()
    (root / ".stamps").mkdir()
    (root / "logs").mkdir()
    steps = ["data", "semantic_sweep", "report"]
    (root / "config.json").write_text(json.dumps({
        "settings": settings.to_dict(), "steps": steps, "versions": {"python": "3.11", "numpy": "1.26.4"},
        "command": ["mscseg-run", "--config", preset],
    }))
    for step in steps:
        (root / ".stamps" / f"{step}.json").write_text(json.dumps({"step": step, "status": "done", "wall_s": 1.5,
                                                                   "log": f"logs/{step}.log", "finished": "now"}))
        (root / "logs" / f"{step}.log").write_text("ok\n")
    pd.DataFrame({
        "model": ["unet", "segnet"], "dice_mean": [0.5, 0.4], "dice_std": [0.1, 0.1], "jaccard_mean": [0.3, 0.2],
        "jaccard_std": [0.05, 0.05], "pixel_accuracy_mean": [0.9, 0.8], "pixel_accuracy_std": [0.01, 0.02],
        "threshold": [0.41, 0.27],
    }).to_csv(root / "semantic" / "sweep" / "table1.csv", index=False)
    pd.DataFrame({"metric": ["dice"], "test": ["friedman"], "group": ["all"], "statistic": [4.0], "p_value": [0.045],
                  "n": [3], "note": [np.nan]}).to_csv(root / "semantic" / "stats" / "tests.csv", index=False)
    pd.DataFrame({"model": ["unet", "segnet"], "unet": [1.0, 0.0123], "segnet": [0.0123, 1.0]}).to_csv(
        root / "semantic" / "stats" / "dunn_dice.csv", index=False)
    pd.DataFrame({"method": ["maskrcnn", "sam_box"], "interpolation": [11, 11], "max_dets": [100, 100], "mAP": [0.25, 0.2]}).to_csv(
        root / "instance" / "instance_table.csv", index=False)
    (root / "figures" / "fig1.png").write_bytes(PNG_1x1)
    return root


def test_report_holds_tables_published_numbers_figures_and_links(tmp_path):
    root = fake_results(tmp_path / "run")
    path = write_report(root)
    assert path == root / "report.html"
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert 'id="demo-banner"' in page and "Demonstration run, not a reproduction" in page
    assert "0.500 ± 0.100" in page and "0.876 ± 0.036" in page       # this run beside the paper (U-Net DC)
    assert "0.748 ± 0.044" in page                                      # SegNet from the paper
    assert "0.640" in page and "0.306" in page                          # the instance paper's mAP
    assert page.count("data:image/png;base64,") == 1
    assert "figures/fig2.png: not produced yet" in page
    assert '<a href="semantic/sweep/table1.csv">' in page and '<a href="instance/instance_table.csv">' in page
    assert "dunn" in page and "0.0123" in page
    assert "numpy" in page and "1.26.4" in page
    assert "file://" not in page and "src=\"/" not in page             # self-contained: no absolute references


def test_paper_settings_show_no_banner(tmp_path):
    root = fake_results(tmp_path / "run", preset="paper")
    assert "demo-banner" not in render_report(root)


def test_real_data_from_random_weights_says_so_and_names_the_peers(tmp_path):
    page = render_report(fake_results(tmp_path / "run", preset="usiigaci"))
    assert 'id="random-weights-banner"' in page and "Real micrographs, networks from random weights" in page
    assert "Cellpose and StarDist start from random weights (no released model)" in page
    assert "Demonstration run" not in page and "and the peers Cellpose and StarDist" in page


def test_table1_comparison_rows():
    ours = pd.DataFrame({"model": ["maskrcnn"], "dice_mean": [0.8], "dice_std": [0.01], "jaccard_mean": [0.7],
                         "jaccard_std": [0.02], "pixel_accuracy_mean": [0.9], "pixel_accuracy_std": [0.03], "threshold": [0.05]})
    published = pd.read_csv(Path(__file__).resolve().parents[1] / "mscseg" / "published" / "table1.csv")
    table = table1_comparison(ours, published)
    row = table.iloc[0]
    assert row["model"] == "Mask R-CNN" and row["DC (this run)"] == "0.800 ± 0.010" and row["DC (paper)"] == "0.856 ± 0.036"
    assert row["threshold (paper)"] == "0.05"


def test_not_a_results_folder(tmp_path, capsys):
    with pytest.raises(RunError, match="config.json: not found"):
        render_report(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert "not a results folder" in capsys.readouterr().err


def test_csv_links_cover_every_csv(tmp_path):
    root = fake_results(tmp_path / "run")
    (root / "instance" / "stats" / "values.csv").write_text("a\n1\n")
    found = {p.as_posix() for p in csv_files(root)}
    assert {"semantic/sweep/table1.csv", "semantic/stats/dunn_dice.csv", "instance/stats/values.csv"} <= found


@pytest.mark.slow
def test_report_of_the_tiny_run(tmp_path_factory):
    from test_mscseg_run import ensure_tiny_run

    root = ensure_tiny_run(tmp_path_factory)
    page = (root / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5                  # Figures 1-4 and the instance figure
    assert "not produced yet" not in page
    links = set(re.findall(r'<a href="([^"]+\.csv)">', page))
    assert {p.as_posix() for p in csv_files(root)} == links
    assert all((root / link).is_file() for link in links)
    assert "Demonstration run" in page and "vit_tiny" in page


def test_training_tables_come_from_the_one_run_record_layout(tmp_path):
    from data.run_record import RunRecord
    from mscseg.layout import Layout

    root = fake_results(tmp_path / "run")
    layout = Layout(root)
    keras = RunRecord("keras", "unet", {"epochs": 3}, {"train": ["a"], "val": ["b"]}, status="finished", epochs=3)
    keras.progress(3, 2, 0.25, 123.4, [40.0, 41.0, 42.0]).write(layout.semantic_model("unet"))
    torch_run = RunRecord("maskrcnn", "maskrcnn_resnet50_fpn_v2", {"weights": "none"}, status="finished", epochs=2,
                          details={"device": "cpu"})
    torch_run.progress(2, 1, 0.5, 77.0, [38.0, 39.0]).write(layout.maskrcnn)
    page = render_report(root)
    times = page.split("<h3>Training time</h3>")[1].split("</table>")[0]
    assert "U-Net" in times and "123.4" in times and "41.0" in times and "finished" in times
    training = page.split("<h3>Training</h3>")[1].split("</table>")[0]
    assert "Mask R-CNN (torchvision)" in training and "77.0" in training and "cpu" in training


def test_report_shows_detections_left_out_by_the_cap(tmp_path):
    root = fake_results(tmp_path / "run")
    for method, dropped in (("maskrcnn", 605), ("sam_box", 0)):
        from mscseg.layout import Layout

        folder = Layout(root).evaluation(method, 11)
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"interpolation": 11, "max_dets": 100, "n_pred": 2758,
                                                         "n_pred_dropped_by_cap": dropped, "n_images_capped": 9 if dropped else 0}))
    page = render_report(root)
    assert "maskrcnn, 11-point: the cap of 100 detections per image left out 605 of 2758 detections in 9 images" in page
    assert "sam_box, 11-point: the cap" not in page
