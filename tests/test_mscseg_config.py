"""mscseg.config: presets, validation messages, base merging; published numbers as data."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mscseg.config import PRESET_DIR, available_presets, check_inputs, from_mapping, load_config
from mscseg.errors import RunError

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "mscseg" / "published"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_presets_exist_once_and_load_through_configs():
    assert available_presets() == ["paper", "small", "tiny", "usiigaci"]
    top = ROOT / "configs"
    assert top.is_symlink() and top.resolve() == PRESET_DIR.resolve(), "configs/ is the link to mscseg/configs/, not a copy"
    for name in available_presets():
        settings = load_config(top / f"{name}.yaml")
        assert settings.name == name and settings.source == str(top / f"{name}.yaml")
        assert {**settings.to_dict(), "source": ""} == {**load_config(name).to_dict(), "source": ""}
    paper = load_config("paper")
    assert (paper.semantic.epochs, paper.semantic.batch_size, paper.semantic.encoder_weights) == (100, 8, "imagenet")
    assert paper.semantic.models == ["unet", "deeplabv3plus", "segnet", "maskrcnn"]
    assert (paper.instance.epochs, paper.instance.batch_size, paper.instance.lr, paper.instance.weight_decay) == (50, 2, 0.003, 0.0005)
    assert paper.instance.weights == "coco" and paper.instance.sam.variant == "vit_h"
    assert paper.instance.evaluation.max_dets[101] == 100 and paper.instance.evaluation.max_dets[11] > 100
    assert paper.untrained == []
    assert (paper.semantic.steps_per_epoch, paper.semantic.lr_schedule, paper.semantic.batchnorm_momentum) == (None, "constant", None)
    assert paper.instance.model_options == {}
    assert (paper.instance.lr_schedule, paper.instance.score_threshold, paper.semantic.eval_weights) == ("plateau", 0.05, "best")
    assert paper.instance.sam_finetune.mask_prompt_probability == 0.0


def test_small_is_the_default_and_untrained_is_labelled():
    settings = load_config(None)
    assert settings.name == "small"
    assert settings.semantic.dataset.synthetic is not None and settings.instance.dataset.synthetic.density == "sparse"
    assert settings.semantic.encoder_weights is None and settings.instance.weights is None
    assert settings.instance.sam.checkpoint is None
    peers = [part for part in settings.untrained if part.endswith("trained from random weights (no released model)")]
    assert len(settings.untrained) == 4 + len(peers) and settings.synthetic
    assert "fine-tuned from random weights" in settings.untrained[3]


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    path = write(tmp_path, "semantic:\n  epoch: 3\n")
    with pytest.raises(RunError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert "semantic.epoch" in message and "did you mean 'epochs'" in message and str(path) in message


@pytest.mark.parametrize("text, expected", [
    ("semantic:\n  epochs: 0\n", "semantic.epochs: must be at least 1"),
    ("semantic:\n  epochs: ten\n", "semantic.epochs: must be a whole number"),
    ("semantic:\n  models: [unet, segnett]\n", "did you mean 'segnet'"),
    ("semantic:\n  image_size: 100\n", "semantic.image_size: must be a multiple of 32"),
    ("semantic:\n  lr_schedule: step\n", "semantic.lr_schedule: must be one of constant, cosine"),
    ("semantic:\n  steps_per_epoch: 0\n", "semantic.steps_per_epoch: must be at least 1"),
    ("semantic:\n  batchnorm_momentum: 1.5\n", "semantic.batchnorm_momentum: must be in [0, 1)"),
    ("semantic:\n  eval_weights: middle\n", "semantic.eval_weights: must be best"),
    ("instance:\n  lr_schedule: step\n", "instance.lr_schedule: must be one of plateau, cosine"),
    ("instance:\n  score_threshold: 1.0\n", "instance.score_threshold: must be at least 0 and below 1"),
    ("instance:\n  sam_finetune:\n    mask_prompt_probability: 2\n", "instance.sam_finetune.mask_prompt_probability: must be between 0 and 1"),
    ("instance:\n  sam:\n    modes: [box, points]\n", "instance.sam.modes: unknown prompt mode 'points'"),
    ("instance:\n  evaluation:\n    interpolations: [11, 40]\n", "unknown interpolation 40"),
    ("instance:\n  dataset:\n    path: a\n    synthetic: {n_images: 4}\n", "give exactly one of 'path'"),
    ("stats:\n  posthoc: tukey\n", "stats.posthoc: must be one of dunn, conover, wilcoxon"),
    ("semantic: [1, 2]\n", "semantic: must be a mapping"),
    ("semantic:\n  enabled: false\ninstance:\n  enabled: false\n", "nothing to run"),
])
def test_bad_values_give_one_line_errors(tmp_path, text, expected):
    with pytest.raises(RunError) as caught:
        load_config(write(tmp_path, text))
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(RunError, match="not valid YAML"):
        load_config(write(tmp_path, "semantic: [unclosed\n"))
    with pytest.raises(RunError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_base_preset_is_merged_key_by_key(tmp_path):
    path = write(tmp_path, "base: tiny\nname: mine\nsemantic:\n  epochs: 2\n  models: [unet]\n")
    settings = load_config(path)
    assert settings.name == "mine"
    assert settings.semantic.epochs == 2 and settings.semantic.models == ["unet"]
    assert settings.semantic.image_size == 64  # from tiny
    assert settings.instance.sam.variant == "vit_tiny"


def test_json_config_and_string_keys(tmp_path):
    data = {"base": "tiny", "instance": {"evaluation": {"interpolations": [11], "max_dets": {"11": 250}}}}
    settings = load_config(write(tmp_path, json.dumps(data), "run.json"))
    assert settings.name == "run"
    assert settings.instance.evaluation.max_dets == {11: 250}


def test_missing_dataset_path_and_checkpoint(tmp_path):
    settings = from_mapping({"semantic": {"dataset": {"path": str(tmp_path / "nowhere")}}, "instance": {"enabled": False}},
                            source="x.yaml")
    with pytest.raises(RunError) as caught:
        check_inputs(settings)
    assert "semantic.dataset.path" in str(caught.value) and "nowhere" in str(caught.value)
    settings = load_config("tiny")
    settings.instance.sam.checkpoint = str(tmp_path / "sam_vit_h.pth")
    with pytest.raises(RunError, match="instance.sam.checkpoint: .* not found; download"):
        check_inputs(settings)


def test_published_table1_matches_spec():
    table = pd.read_csv(PUBLISHED / "table1.csv").set_index("model")
    spec = {  # SPEC.md, Table 1: DC, JI, PA (mean, sd) and threshold
        "unet": (0.876, 0.036, 0.781, 0.058, 0.935, 0.028, 0.43),
        "deeplabv3plus": (0.855, 0.033, 0.749, 0.050, 0.922, 0.031, 0.30),
        "segnet": (0.748, 0.044, 0.600, 0.055, 0.858, 0.057, 0.15),
        "maskrcnn": (0.856, 0.036, 0.750, 0.053, 0.923, 0.032, 0.05),
    }
    columns = ["dice_mean", "dice_std", "jaccard_mean", "jaccard_std", "pixel_accuracy_mean", "pixel_accuracy_std", "threshold"]
    for model, values in spec.items():
        assert tuple(table.loc[model, columns]) == pytest.approx(values, abs=1e-9)
    optimal = pd.read_csv(PUBLISHED / "optimal_thresholds.csv").set_index(["model", "metric"])["threshold"]
    assert optimal[("deeplabv3plus", "pixel_accuracy")] == 0.42 and optimal[("maskrcnn", "jaccard")] == 0.06
    times = pd.read_csv(PUBLISHED / "training_time.csv").set_index("model")["wall_s"]
    assert times.to_dict() == {"unet": 21 * 60 + 55, "deeplabv3plus": 16 * 60 + 18, "segnet": 16 * 60 + 1, "maskrcnn": 18 * 60 + 38}


def test_published_instance_table_matches_spec():
    table = pd.read_csv(PUBLISHED / "instance_table.csv").set_index(["dataset", "method"])
    spec = {  # SPEC.md, study B: cells/image, detected/image, mean confidence, mAP
        ("rat_msc", "maskrcnn"): (48, 8.4, 10.0, 0.938, 0.640),
        ("rat_msc", "sam"): (48, 8.4, 10.0, 0.927, 0.605),
        ("human_msc", "maskrcnn"): (207, 41.85, 37.17, 0.801, 0.306),
        ("human_msc", "sam"): (207, 41.85, 37.17, 0.848, 0.262),
    }
    columns = ["n_images", "cells_per_image", "detected_per_image", "mean_confidence", "map"]
    for key, values in spec.items():
        assert tuple(table.loc[key, columns]) == pytest.approx(values, abs=1e-9)
    assert set(table["convention"]) == {"11-point interpolation, IoU 0.50:0.95"}


def test_usiigaci_preset_gives_every_trained_model_the_same_budget_from_random_weights():
    from mscseg.config import enabled_peers
    from mscseg.steps import build_steps

    settings = load_config("usiigaci")
    instance = settings.instance
    budgets = {"semantic": settings.semantic.max_minutes, "maskrcnn": instance.max_minutes,
               "sam_finetune": instance.sam_finetune.max_minutes,
               **{name: getattr(instance.peers, name).max_minutes for name in enabled_peers(instance)}}
    assert enabled_peers(instance) == ["cellpose", "stardist"] and set(budgets.values()) == {5.0}, budgets
    assert len(settings.untrained) == 6 and not settings.synthetic
    trained = [s.name for s in build_steps(settings) if s.resumable]
    assert len(trained) == len(settings.semantic.models) + 4
    assert settings.semantic.dataset.path == instance.dataset.path and instance.split == settings.semantic.split


@pytest.mark.realdata
def test_usiigaci_preset_reads_the_real_micrographs_and_splits_them(usiigaci_root):
    from data import make_split, read_dataset

    settings = load_config("usiigaci")
    spec = settings.instance.dataset
    assert Path(spec.path).name == "train" and Path(spec.path).parent.name == "usiigaci"
    dataset = read_dataset(usiigaci_root / "train", spec.format, **spec.options)
    assert len(dataset) == 45 and dataset.format == "per_sample"
    sample = dataset.get("set1")
    assert sample.image.ndim == 3 and sample.image.shape[2] == 3 and min(sample.image.shape[:2]) > 1000
    assert sample.image.dtype == "float32" and 0.0 <= sample.image.min() and sample.image.max() <= 1.0
    assert sample.labels.shape == sample.image.shape[:2] and sample.labels.max() > 10
    split = make_split(dataset.names, settings.instance.split.val_fraction, settings.instance.split.seed)
    assert (len(split["train"]), len(split["val"])) == (36, 9)
