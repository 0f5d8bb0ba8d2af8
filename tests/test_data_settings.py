"""Settings declared once (data.settings and the packages' settings dataclasses): no field twice, a new
setting reaching the config, the command line, the stamp and run.json, and config checks that are the
packages' own (the Mask R-CNN builder's refusals reported by ``mscseg-run --list``)."""
from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from data.settings import add_arguments, field_names, from_arguments, setting
from keras_semseg.settings import TrainRecipe, TrainSettings
from mscseg import config
from mscseg import run as runner
from torch_instseg.settings import FinetuneSettings, MaskRCNNSettings

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {config.SemanticConfig: TrainRecipe, config.InstanceConfig: MaskRCNNSettings,
            config.SamFinetuneConfig: FinetuneSettings}
PACKAGE_SETTINGS = (TrainRecipe, TrainSettings, MaskRCNNSettings, FinetuneSettings)
CONFIG_ONLY = {  # the runner's keys: what runs (enabled, models, peers), on what data, on how many devices (the launch)
    "SemanticConfig": {"enabled", "dataset", "split", "models", "model_options", "steps_per_epoch_by_model", "metrics",
                       "figure_images", "devices"},
    "InstanceConfig": {"enabled", "dataset", "split", "score_threshold", "device", "devices", "sam", "sam_finetune", "peers",
                       "evaluation", "figure_images"},
    "SamFinetuneConfig": {"enabled", "modes", "prompt_sources"},
}


def class_fields(path: Path) -> dict[str, set[str]]:
    """``{class name: names annotated in its body}`` of every class in a source file (what an ast sees declared)."""
    tree = ast.parse(path.read_text())
    return {node.name: {item.target.id for item in node.body if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
            for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


def declared_twice(root: Path) -> int:
    """Fields written both in a run-config section and in the package settings class behind it (an ast count)."""
    sections = class_fields(root / "mscseg" / "config.py")
    packages: dict[str, set[str]] = {}
    for relative in ("keras_semseg/train.py", "keras_semseg/settings.py", "torch_instseg/maskrcnn.py",
                     "torch_instseg/sam_finetune.py", "torch_instseg/settings.py"):
        if (root / relative).is_file():
            for name, fields in class_fields(root / relative).items():
                packages.setdefault(name, set()).update(fields)
    train = packages.get("TrainSettings", set()) | packages.get("TrainRecipe", set())
    pairs = (("SemanticConfig", train - {"model_options"}), ("InstanceConfig", packages.get("MaskRCNNSettings", set())),
             ("SamFinetuneConfig", packages.get("FinetuneSettings", set())))
    return sum(len(sections.get(section, set()) & fields) for section, fields in pairs)


# ---------------------------------------------------------------- one declaration each

def test_no_setting_is_declared_in_two_places():
    assert declared_twice(ROOT) == 0
    sections = class_fields(ROOT / "mscseg" / "config.py")
    for section, package in SECTIONS.items():
        assert issubclass(section, package), f"{section.__name__} is not built from {package.__name__}"
        own = sections[section.__name__]
        assert not own & set(field_names(package)), f"{section.__name__} declares {own & set(field_names(package))} again"
        assert own == CONFIG_ONLY[section.__name__], (
            f"{section.__name__}: a config-only key was added or removed ({own ^ CONFIG_ONLY[section.__name__]}); "
            "a training setting belongs in the package's settings dataclass")


def test_every_config_key_has_a_dataclass_field_behind_it():
    for section, package in SECTIONS.items():
        for f in dataclasses.fields(section):
            if f.name in CONFIG_ONLY[section.__name__]:
                per_model = f.metadata.get("per_model")
                assert per_model is None or per_model in field_names(TrainSettings), f"{section.__name__}.{f.name}"
            else:
                assert f.name in field_names(package), f"{section.__name__}.{f.name} has no {package.__name__} field"
    for path in sorted((ROOT / "mscseg" / "configs").glob("*.yaml")):
        config.load_config(path)  # an unknown key would be refused


def test_lr_schedules_and_checkpoint_mapping_are_written_once():
    for relative in ("mscseg/config.py", "mscseg/steps.py", "mscseg/pretrained.py", "keras_semseg/train.py",
                     "torch_instseg/maskrcnn.py", "torch_instseg/sam_finetune.py"):
        text = (ROOT / relative).read_text()
        assert '("plateau", "cosine")' not in text and '("constant", "cosine")' not in text, relative
        assert '== "default" else' not in text, relative


def test_command_line_flags_come_from_the_fields():
    import argparse

    @dataclasses.dataclass
    class Toy:
        size: int | None = setting(None, "a size")
        rate: float = setting(0.5, "a rate")
        fast: bool = setting(True, "go fast")
        options: dict = setting(help="more", factory=dict)
        name: str = setting(help="required", kw_only=True)

    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy)
    args = parser.parse_args(["--name", "x", "--size", "none", "--no-fast", "--options", '{"a": 1}'])
    assert from_arguments(Toy, args) == Toy(size=None, rate=0.5, fast=False, options={"a": 1}, name="x")
    assert from_arguments(Toy, parser.parse_args(["--name", "y", "--size", "7"]), rate=0.1) == Toy(7, 0.1, True, {}, name="y")
    with pytest.raises(SystemExit):
        parser.parse_args([])


# ---------------------------------------------------------------- a setting added to a dataclass

ADDED_SETTING = r'''
import importlib.util, json, sys, tempfile, types
from pathlib import Path

def load_patched(name, path, classes):
    text = Path(path).read_text()
    for cls in classes:
        start = text.index(f"class {cls}")
        cut = text.index("    def problems(self)", start)
        text = text[:cut] + '    knob: int = setting(3, "a setting added in the test")\n\n' + text[cut:]
    module = types.ModuleType(name)
    module.__file__, module.__package__ = path, name.rpartition(".")[0]
    sys.modules[name] = module
    exec(compile(text, path, "exec"), module.__dict__)

import keras_semseg, torch_instseg
load_patched("keras_semseg.settings", keras_semseg.__path__[0] + "/settings.py", ["TrainRecipe"])
load_patched("torch_instseg.settings", torch_instseg.__path__[0] + "/settings.py", ["MaskRCNNSettings", "FinetuneSettings"])

from data.run_record import RunRecord
from data.settings import from_arguments
from keras_semseg.settings import TrainSettings
from mscseg.config import from_mapping
from mscseg.steps import build_steps, settings_of, stamp_hashes
from torch_instseg import maskrcnn, sam_finetune
from torch_instseg.settings import FinetuneSettings, MaskRCNNSettings
import keras_semseg.train as keras_train

out = {}
default = from_mapping({}, name="d")
changed = from_mapping({"semantic": {"knob": 5}, "instance": {"knob": 6, "sam_finetune": {"knob": 7}}}, name="d")
out["config"] = [default.semantic.knob, default.instance.knob, default.instance.sam_finetune.knob,
                 changed.to_dict()["semantic"]["knob"], changed.to_dict()["instance"]["knob"],
                 changed.to_dict()["instance"]["sam_finetune"]["knob"]]
before, after = stamp_hashes(build_steps(default), default), stamp_hashes(build_steps(changed), changed)
out["stamps"] = sorted(name for name in before if before[name] != after[name])
steps = {step.name: step for step in build_steps(changed)}
out["reads"] = [steps["semantic_train_unet"].settings(changed)["semantic.knob"], steps["instance_train"].settings(changed)["instance.knob"]]
cli = ["--data", "d", "--split", "s.json", "--out", "o", "--knob", "9"]
out["cli"] = [from_arguments(TrainSettings, keras_train._parser().parse_args(cli + ["--model", "unet"])).knob,
              from_arguments(MaskRCNNSettings, maskrcnn.build_parser().parse_args(cli)).knob,
              from_arguments(FinetuneSettings, sam_finetune.build_parser().parse_args(cli)).knob]
folder = Path(tempfile.mkdtemp())
split = {"path": None, "seed": 0, "train": ["a"], "val": ["b"]}
mask = maskrcnn.load_or_resume_record(folder / "maskrcnn", settings_of(MaskRCNNSettings, changed.instance).checked(), split, False, False)
mask.write(folder / "maskrcnn")
keras = settings_of(TrainSettings, changed.semantic, model="unet", model_options={}).checked()
RunRecord("keras", "unet", keras.to_record(), split).write(folder / "unet")
tuned = settings_of(FinetuneSettings, changed.instance.sam_finetune).checked()
RunRecord("sam_finetune", "sam_vit_tiny", tuned.to_dict(), split).write(folder / "sam")
out["run_json"] = [json.loads((folder / name / "run.json").read_text())["settings"]["knob"] for name in ("unet", "maskrcnn", "sam")]
print(json.dumps(out))
'''


def test_a_setting_added_to_a_dataclass_reaches_config_cli_stamp_and_run_json():
    import json

    done = subprocess.run([sys.executable, "-c", ADDED_SETTING], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["config"] == [3, 3, 3, 5, 6, 7]
    assert seen["cli"] == [9, 9, 9]
    assert seen["reads"] == [5, 6]
    assert {"semantic_train_unet", "instance_train", "instance_sam_finetune"} <= set(seen["stamps"])
    assert seen["run_json"] == [5, 6, 7]


# ---------------------------------------------------------------- the config's checks are the packages' own

@pytest.mark.parametrize("options, expected", [
    ("{head_channels: 64}", "instance.model_options.head_channels: head_channels 64 needs weights 'none'"),
    ("{box_nms_tresh: 0.3}", "instance.model_options.box_nms_tresh: unknown Mask R-CNN option"),
    ("{anchor_sizes: [16, 32, 64]}", "instance.model_options.anchor_sizes: must be 5 positive sizes"),
])
def test_mscseg_run_list_refuses_model_options_the_builder_would_refuse(tmp_path, capsys, options, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(f"base: tiny\ninstance:\n  weights: coco\n  model_options: {options}\n")
    code = runner.main(["--config", str(path), "--out", str(tmp_path / "results"), "--list"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {path}: ") and "\n" not in err and expected in err, err
    assert not (tmp_path / "results").exists()


def test_every_problem_of_a_config_is_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base: tiny\nsemantic:\n  epochs: 0\ninstance:\n  lr: -1\n  model_options: {head_channels: 0}\n"
                    "  sam_finetune:\n    trainable: encoder\n")
    with pytest.raises(config.RunError) as caught:
        config.load_config(path)
    message = str(caught.value)
    for fragment in ("semantic.epochs: must be at least 1", "instance.lr: must be positive",
                     "instance.model_options.head_channels: must be a positive whole number",
                     "instance.sam_finetune.trainable: must be one of"):
        assert fragment in message, message
    assert "\n" not in message and message.startswith(str(path))
