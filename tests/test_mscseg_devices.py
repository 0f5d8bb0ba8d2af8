"""mscseg.devices and the runner's device launch: counts from the environment, torchrun for the Mask R-CNN step,
the first N GPUs for a semantic step, refusals at config time, and a real two-process instance_train step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mscseg.config import load_config
from mscseg.devices import first_gpus, resolve_devices, torchrun_command, visible_gpus
from mscseg.errors import RunError
from mscseg.run import on_devices
from mscseg.steps import build_steps

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("listed, count", [("0,1", 2), ("3", 1), ("", 0), ("-1", 0), ("2, 5 ,", 2)])
def test_visible_gpus_follow_cuda_visible_devices(listed, count):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": listed}) == count


def test_visible_gpus_without_nvidia_smi_is_zero(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert visible_gpus({}) == 0


@pytest.mark.parametrize("value, gpus, count", [("auto", 0, 1), ("auto", 2, 2), (1, 4, 1), (3, 0, 3)])
def test_resolve_devices(value, gpus, count):
    assert resolve_devices(value, gpus) == count


def test_torchrun_command_keeps_the_module_and_its_arguments():
    command = torchrun_command(["/py", "-m", "mscseg.step", "instance_train", "--out", "r"], 2)
    assert command == ["/py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mscseg.step",
                       "instance_train", "--out", "r"]
    with pytest.raises(ValueError):
        torchrun_command(["/py", "script.py"], 2)


def test_first_gpus_takes_the_first_visible_ones():
    assert first_gpus(1, {"CUDA_VISIBLE_DEVICES": "3,5"}) == "3"
    assert first_gpus(2, {}) == "0,1"


@pytest.mark.parametrize("section, value", [("instance", 0), ("instance", "two"), ("semantic", -1), ("semantic", True)])
def test_bad_device_counts_are_refused_at_config_time(tmp_path, section, value):
    with pytest.raises(RunError, match=rf"{section}\.devices: must be (auto or )?a whole number"):
        _tiny(tmp_path, **{section: {"devices": value}})


def _tiny(tmp_path, **sections):
    """The tiny preset with ``sections`` merged over it (a config file naming ``base: tiny``)."""
    path = tmp_path / f"tiny_{abs(hash(json.dumps(sections, sort_keys=True)))}.json"
    path.write_text(json.dumps({"base": "tiny", **sections}))
    return load_config(path)


def _step(settings, name):
    return next(step for step in build_steps(settings) if step.name == name)


def test_the_mask_rcnn_step_runs_under_torchrun_with_two_devices(tmp_path):
    settings = _tiny(tmp_path, instance={"devices": 2})
    command, env = on_devices(_step(settings, "instance_train"), settings, ["/py", "-m", "mscseg.step", "instance_train"],
                              {"CUDA_VISIBLE_DEVICES": ""}, tmp_path / "log")
    assert command[:6] == ["/py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert "2 processes under torchrun (CPU, gloo" in (tmp_path / "log").read_text()
    one = _tiny(tmp_path)
    assert on_devices(_step(one, "instance_train"), one, ["/py", "-m", "mscseg.step"], {})[0] == ["/py", "-m", "mscseg.step"]


def test_a_semantic_step_sees_the_first_n_gpus_and_all_of_them_on_auto(tmp_path):
    settings = _tiny(tmp_path, semantic={"devices": 1})
    step = _step(settings, "semantic_train_unet")
    assert on_devices(step, settings, ["/py"], {"CUDA_VISIBLE_DEVICES": "3,5"})[1]["CUDA_VISIBLE_DEVICES"] == "3"
    auto = _tiny(tmp_path)
    assert on_devices(_step(auto, "semantic_train_unet"), auto, ["/py"], {"CUDA_VISIBLE_DEVICES": "3,5"})[1] == \
        {"CUDA_VISIBLE_DEVICES": "3,5"}


def test_the_device_count_enters_the_stamp_only_when_set(tmp_path):
    default, two = _tiny(tmp_path), _tiny(tmp_path, instance={"devices": 2})
    assert "instance.devices" not in _step(default, "instance_train").settings(default)
    assert _step(two, "instance_train").settings(two)["instance.devices"] == 2


@pytest.mark.slow
def test_the_runner_trains_mask_rcnn_with_two_processes(tmp_path):
    config = tmp_path / "two.json"
    config.write_text(json.dumps({"base": "tiny", "name": "two", "semantic": {"enabled": False},
                                  "instance": {"devices": 2, "peers": {"cellpose": {"enabled": False},
                                                                       "stardist": {"enabled": False}}}}))
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-m", "mscseg.run", "--config", str(config), "--out", str(out),
                           "--only", "data", "--only", "split", "--only", "instance_train"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "instance" / "maskrcnn" / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["details"]["world_size"] == 2 and record["details"]["backend"] == "gloo"
    assert record["details"]["global_batch"] == 2 and record["details"]["batch_per_process"] == 1
    assert "devices: 2 processes under torchrun" in (out / "logs" / "instance_train.log").read_text()
