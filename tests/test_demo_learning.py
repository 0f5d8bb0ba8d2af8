"""benches/demo_learning.py reads a finished results folder and checks each figure against its target."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd

BENCH = Path(__file__).resolve().parent.parent / "benches" / "demo_learning.py"


def _bench():
    spec = importlib.util.spec_from_file_location("demo_learning", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results(root: Path) -> Path:
    (root / "semantic" / "sweep").mkdir(parents=True)
    (root / "semantic" / "stats").mkdir(parents=True)
    (root / "instance" / "stats").mkdir(parents=True)
    (root / "split.json").write_text(json.dumps({"train": ["a"], "val": [f"v{i}" for i in range(16)]}))
    (root / "instance" / "split.json").write_text(json.dumps({"train": ["a"], "val": [f"v{i}" for i in range(8)]}))
    pd.DataFrame({"model": ["unet", "deeplabv3plus", "segnet", "maskrcnn"], "dice_mean": [0.90, 0.80, 0.74, 0.76],
                  "threshold": [0.45, 0.99, 0.30, 0.20]}).to_csv(root / "semantic" / "sweep" / "table1.csv", index=False)
    pd.DataFrame({"interpolation": [11, 11, 101, 11, 11], "method": ["maskrcnn", "sam_box", "maskrcnn", "cellpose", "stardist"],
                  "mAP": [0.35, 0.1, 0.2, 0.5, 0.2], "AP50": [0.55, 0.2, 0.5, 0.8, 0.7],
                  "cells_per_image": [8.0, 8.0, 8.0, 8.0, 8.0], "detections_per_image": [9.5, 9.5, 9.5, 8.0, 5.0]}
                 ).to_csv(root / "instance" / "instance_table.csv", index=False)
    pd.DataFrame({"metric": ["dice", "pixel_accuracy"], "test": ["friedman", "friedman"], "p_value": [0.01, None]}
                 ).to_csv(root / "semantic" / "stats" / "tests.csv", index=False)
    pd.DataFrame({"metric": ["ap"], "test": ["friedman"], "p_value": [0.2]}).to_csv(root / "instance" / "stats" / "tests.csv", index=False)
    return root


def test_each_figure_is_checked_against_its_target(tmp_path, capsys):
    bench = _bench()
    results = _results(tmp_path / "run")
    verdicts = {line["target"]: line["ok"] for line in
                bench.semantic_lines(results) + bench.instance_lines(results) + bench.stats_lines(results)}
    assert verdicts["semantic validation images"] and verdicts["instance validation images"]
    assert verdicts["unet Dice at its optimal threshold"] and verdicts["deeplabv3plus Dice at its optimal threshold"]
    assert not verdicts["segnet Dice at its optimal threshold"] and verdicts["maskrcnn Dice at its optimal threshold"]
    assert not verdicts["deeplabv3plus Dice-optimal threshold"] and verdicts["unet Dice-optimal threshold"]
    assert verdicts["Mask R-CNN mAP@[.50:.95] (11-point)"] and not verdicts["Mask R-CNN AP50 (11-point)"]
    assert verdicts["Mask R-CNN detections per image"] and not verdicts["best SAM mode mAP (sam_box)"]
    assert verdicts["Cellpose (peer) mAP@[.50:.95] (11-point)"] and verdicts["Cellpose (peer) detections per image"]
    assert not verdicts["StarDist (peer) mAP@[.50:.95] (11-point)"] and verdicts["StarDist (peer) AP50 (11-point)"]
    assert not verdicts["StarDist (peer) detections per image"]
    assert not verdicts["semantic Friedman p defined for every metric"]
    assert verdicts["instance Friedman p defined for every metric"]
    assert "MISS  segnet Dice" in capsys.readouterr().out


def test_main_on_a_results_folder_exits_1_when_a_target_is_missed(tmp_path):
    bench = _bench()
    results = _results(tmp_path / "run")
    assert bench.main(["--results", str(results), "--json", str(tmp_path / "lines.json")]) == 1
    lines = json.loads((tmp_path / "lines.json").read_text())["lines"]
    assert len(lines) == 22 and sum(line["ok"] for line in lines) == 15


def test_seed_config_changes_only_the_training_seeds(tmp_path):
    from mscseg.config import load_config

    bench = _bench()
    path = bench.seed_config("small", 2, tmp_path)
    seeded, base = load_config(path).to_dict(), load_config("small").to_dict()
    assert seeded["semantic"]["seed"] == seeded["instance"]["seed"] == seeded["instance"]["sam_finetune"]["seed"] == 2
    for section in ("semantic", "instance"):
        assert seeded[section]["dataset"] == base[section]["dataset"] and seeded[section]["split"] == base[section]["split"]
    assert {name: peer["seed"] for name, peer in seeded["instance"]["peers"].items()} == {"cellpose": 2, "stardist": 2}
    seeded["semantic"]["seed"] = seeded["instance"]["seed"] = seeded["instance"]["sam_finetune"]["seed"] = 0
    for peer in seeded["instance"]["peers"].values():
        peer.pop("seed")
    for peer in base["instance"]["peers"].values():
        peer.pop("seed", None)
    seeded.pop("name"), base.pop("name")
    assert seeded["semantic"] == base["semantic"] and seeded["instance"] == base["instance"]
