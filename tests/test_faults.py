"""Faults a user meets: a second writer on a busy folder, a run killed at any moment, a full disk.

One process writes a folder at a time (``data.lock``); a run killed with SIGKILL at random
moments finishes when started again, with no staging or partial files left; a write that
finds the disk full stops with one line naming the file and leaves the previous outputs
byte for byte as they were.
"""
from __future__ import annotations

import errno
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.lock import LOCK_NAME, FolderBusyError, acquire, holder, leftovers, locked
from mscseg import run as runner

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DEADLINE_S = 120.0


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT)]))


def _default_sigint() -> None:
    """In a child: SIGINT back to its default, whatever the shell that started the tests ignores."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(condition, what: str, process: subprocess.Popen | None = None, deadline_s: float = DEADLINE_S) -> None:
    """Poll ``condition`` until it holds (a generous deadline, for a loaded machine)."""
    end = time.monotonic() + deadline_s
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: the process ended first ({process.returncode}): {process.communicate()}")
        if time.monotonic() > end:
            pytest.fail(f"{what}: not after {deadline_s:.0f} s")
        time.sleep(0.05)


def _holding(folder: Path, command: str = "holder") -> subprocess.Popen:
    """Another process holding ``folder``'s lock until killed."""
    script = (f"import sys, time; from data.lock import acquire; acquire({str(folder)!r}, {command!r}); "
              "print('held', flush=True); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", script], env=_env(), stdout=subprocess.PIPE, text=True,
                               preexec_fn=_default_sigint)
    assert process.stdout.readline().strip() == "held"
    return process


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


# ---------------------------------------------------------------- one writer per folder

def test_the_kernel_releases_the_lock_of_a_killed_process(tmp_path):
    folder = tmp_path / "results"
    other = _holding(folder, "mscseg-run --config tiny")
    try:
        with pytest.raises(FolderBusyError, match=f"in use by process {other.pid} \\(mscseg-run --config tiny\\)"):
            acquire(folder)
        assert holder(folder)["pid"] == other.pid
    finally:
        other.kill()
        other.wait()
    assert (folder / LOCK_NAME).is_file()          # a killed holder leaves its file, not its lock
    assert holder(folder) is None
    with locked(folder) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists() and folder.is_dir()


def test_a_second_run_on_a_busy_results_folder_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MSCSEG_CALLER_CWD", raising=False)
    out = tmp_path / "results"
    lock = acquire(out, "mscseg-run --config tiny --out results")
    try:
        started = time.monotonic()
        assert runner.main(["--config", "tiny", "--out", str(out)]) == 2
        assert time.monotonic() - started < 10
        line = _one_error_line(capsys)
        assert line.startswith(f"error: {out.absolute()}: in use by process {os.getpid()} (mscseg-run --config tiny")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
        assert runner.main(["--config", "tiny", "--out", str(out), "--list"]) == 0   # reading is fine
        assert f"in use by process {os.getpid()}" in capsys.readouterr().out.splitlines()[0]
    finally:
        lock.release()
    assert not out.exists()


def _command(name: str, tmp_path: Path, out: Path):
    """(main, argv) of a console script writing into ``out`` (the inputs need not exist: the lock comes first)."""
    data = ["--data", str(tmp_path / "data"), "--split", str(tmp_path / "split.json"), "--out", str(out)]
    if name == "semseg-train":
        from keras_semseg.train import main
        return main, data + ["--model", "unet"]
    if name == "instseg-train":
        from torch_instseg.maskrcnn import main
        return main, data
    if name == "instseg-sam-train":
        from torch_instseg.sam_finetune import main
        return main, data
    from mscseg.predict import main
    return main, ["--model", str(tmp_path / "run"), "--images", str(tmp_path / "images"), "--out", str(out)]


@pytest.mark.parametrize("name", ["semseg-train", "instseg-train", "instseg-sam-train", "mscseg-predict"])
@pytest.mark.parametrize("where", ["same folder", "inside a run's folder"])
def test_a_command_writing_into_a_busy_folder_exits_2_with_one_line(tmp_path, capsys, name, where):
    busy = tmp_path / "results"
    out = busy if where == "same folder" else busy / "semantic" / "unet"
    other = _holding(busy, "mscseg-run --config small")
    try:
        main, argv = _command(name, tmp_path, out)
        assert main(argv) == 2
        line = _one_error_line(capsys)
        assert f"in use by process {other.pid} (mscseg-run --config small)" in line and str(out.absolute()) in line
    finally:
        other.kill()
        other.wait()
    assert not (busy / "semantic").exists()


def test_instseg_train_refuses_a_busy_predictions_folder_before_writing(tmp_path, capsys):
    """``--predictions`` is a second output folder: held by another process, the command exits 2 at once."""
    from torch_instseg.maskrcnn import main

    predictions = tmp_path / "predictions"
    other = _holding(predictions, "mscseg-predict --out predictions")
    try:
        argv = _command("instseg-train", tmp_path, tmp_path / "run")[1] + ["--predictions", str(predictions)]
        assert main(argv) == 2
        line = _one_error_line(capsys)
        assert f"in use by process {other.pid} (mscseg-predict --out predictions)" in line
        assert str(predictions.absolute()) in line
    finally:
        other.kill()
        other.wait()
    assert not (tmp_path / "run").exists() and not (tmp_path / "split.json").exists()


def test_instseg_train_with_predictions_inside_its_run_folder_takes_one_lock(tmp_path):
    from torch_instseg.maskrcnn import _nested

    run = tmp_path / "run"
    assert _nested(run / "predictions", run) and _nested(run, run / "predictions") and _nested(run, run)
    assert not _nested(tmp_path / "predictions", run)


def test_a_run_is_refused_while_a_trainer_writes_into_one_of_its_folders(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MSCSEG_CALLER_CWD", raising=False)
    out = tmp_path / "results"
    partial = out / "semantic" / "unet" / "last.partial.weights.h5"
    other = _holding(out / "semantic" / "unet", "semseg-train --model unet")
    partial.write_bytes(b"a live trainer's checkpoint")
    try:
        assert runner.main(["--config", "tiny", "--out", str(out)]) == 2
        line = _one_error_line(capsys)
        assert f"in use by process {other.pid} (semseg-train --model unet)" in line
        assert f"it writes into {out.absolute() / 'semantic' / 'unet'}" in line
        assert partial.read_bytes() == b"a live trainer's checkpoint"   # a live run's partial file is never touched
    finally:
        other.kill()
        other.wait()


def test_leftovers_of_a_dead_run_are_removed_with_one_note(tmp_path, capsys):
    out = tmp_path / "results"
    made = [out / "semantic" / "sweep" / ".staging-ab12cd_z" / "per_image.csv", out / "config.json.partial",
            out / "semantic" / "unet" / "last.partial.weights.h5", out / "instance" / "maskrcnn" / "last.pt.partial",
            out / "data" / "semantic" / "images.partial" / "a.png"]
    kept = [out / "semantic" / "unet" / "history.csv", out / "notes.partial.txt.keep"]
    for path in made + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    with locked(out, out=sys.stdout):
        assert leftovers(out) == []
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith(f"mscseg: note: removed 5 leftover(s) of a stopped run in {out}")
    assert all(p.is_file() for p in kept) and not any(p.exists() for p in made)


def test_a_killed_runner_s_step_process_keeps_the_folder_busy(tmp_path):
    """The step process inherits the lock: while it still writes, the folder of its killed runner is busy."""
    script = ("import sys; from mscseg import run; run.STEP_FACTORY = 'child_steps:build'; "
              f"sys.exit(run.main(['--config', 'tiny', '--out', {str(tmp_path)!r}, '--only', 'child_sleep']))")
    parent = subprocess.Popen([sys.executable, "-c", script], env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_default_sigint)
    marker = tmp_path / "sleeping.txt"
    try:
        _wait_for(lambda: marker.is_file() and marker.read_text(), "the step process to start", parent)
        child = int(marker.read_text())
        parent.kill()
        parent.wait()
        with pytest.raises(FolderBusyError, match=f"process {parent.pid} .*has ended, a step process it started still runs"):
            acquire(tmp_path)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
    _wait_for(lambda: holder(tmp_path) is None, "the lock to be released")
    assert child != parent.pid


# ---------------------------------------------------------------- a full disk

def _disk_full_on(monkeypatch, name: str) -> list[str]:
    """Every text write of ``<name>.partial`` fails as a full disk does (ENOSPC, no file name); the attempts."""
    tried: list[str] = []
    write_text = pathlib.Path.write_text

    def full(self, *args, **kwargs):
        if self.name == f"{name}.partial":
            tried.append(str(self))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    return tried


def _assert_disk_full(capsys, tried: list[str], target: Path, before: dict[str, bytes], folder: Path) -> None:
    assert tried, "the write never happened"
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {target}: No space left on device; the outputs written before are unchanged")
    assert _snapshot(folder) == before
    assert leftovers(folder) == []


def _sweep_case(tmp_path: Path) -> list[str]:
    from data.imageio import write_png

    rng = np.random.default_rng(0)
    probs, masks = tmp_path / "probs", tmp_path / "masks"
    probs.mkdir()
    for name in ("img_a", "img_b", "img_c"):
        truth = rng.random((12, 16)) < 0.4
        np.save(probs / f"{name}.npy", np.clip(truth * 0.6 + rng.random((12, 16)) * 0.5, 0, 1).astype(np.float32))
        write_png(masks / f"{name}.png", (truth * 255).astype(np.uint8))
    return ["--probs", str(probs), "--masks", str(masks), "--model", "unet"]


def _stats_case(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    rows = [(model, f"{i:03d}", float(np.clip(0.7 + shift + rng.normal(0, 0.05), 0, 1)))
            for model, shift in (("unet", 0.1), ("segnet", 0.0), ("deeplabv3plus", -0.1)) for i in range(8)]
    csv = tmp_path / "per_image.csv"
    pd.DataFrame(rows, columns=["model", "image", "dice"]).to_csv(csv, index=False)
    return [str(csv), "--metrics", "dice", "--no-figure"]


def _evaluate_case(tmp_path: Path) -> list[str]:
    from torch_instseg.coco import dataset_to_coco, instances_to_results, write_coco
    from data import Sample, in_memory

    labels = np.zeros((24, 32), np.int32)
    labels[2:8, 2:8], labels[12:20, 10:18] = 1, 2
    gt = dataset_to_coco(list(in_memory([Sample(np.zeros((24, 32, 3), np.float32), labels, "img", "")])))
    results = instances_to_results(gt["images"][0]["id"], np.stack([labels == 1, labels == 2]), [0.9, 0.8])
    gt_path, pred_path = write_coco(tmp_path / "gt.json", gt), write_coco(tmp_path / "pred.json", results)
    return ["--gt", str(gt_path), "--pred", str(pred_path)]


def _predict_case(tmp_path: Path, monkeypatch) -> list[str]:
    import keras_semseg.predict as keras_predict
    from data.imageio import write_png
    from mscseg import predict

    monkeypatch.setattr(keras_predict, "predict_probs",
                        lambda model, images, size, batch_size=8: [image[..., 0].astype(np.float64) for image in images])
    loaded = predict.LoadedModel("semantic", "unet", None, 32, tmp_path / "run")
    monkeypatch.setattr(predict, "load_model", lambda run_dir, which="best", device=None: loaded)
    image = np.zeros((32, 32), np.uint8)
    image[4:12, 4:12] = image[20:28, 16:30] = 255
    write_png(tmp_path / "images" / "cells.png", image)
    return ["--model", str(tmp_path / "run"), "--images", str(tmp_path / "images")]


@pytest.mark.parametrize("tool, target", [("sweep", "summary.csv"), ("stats", "tests.csv"), ("evaluate", "per_image.csv"),
                                          ("predict", "counts.csv")])
def test_a_full_disk_stops_with_one_line_and_the_previous_outputs_unchanged(tmp_path, capsys, monkeypatch, tool, target):
    if tool == "sweep":
        from keras_semseg.sweep import main
        argv = _sweep_case(tmp_path)
    elif tool == "stats":
        from stats.__main__ import main
        argv = _stats_case(tmp_path)
    elif tool == "evaluate":
        from torch_instseg.evaluate import main
        argv = _evaluate_case(tmp_path)
    else:
        from mscseg.predict import main
        argv = _predict_case(tmp_path, monkeypatch)
    out = tmp_path / "out"
    argv += ["--out", str(out)]
    assert main(argv) == 0
    assert (out / target).is_file()
    before = _snapshot(out)
    capsys.readouterr()
    tried = _disk_full_on(monkeypatch, target)
    assert main(argv + ["--overwrite"]) == 2
    _assert_disk_full(capsys, tried, out / target, before, out)


def test_a_full_disk_during_a_checkpoint_stops_with_one_line_and_the_last_checkpoint_unchanged(tmp_path, capsys, monkeypatch,
                                                                                                synthetic_folder):
    import torch

    from torch_instseg.sam_finetune import main

    out = tmp_path / "run"
    argv = ["--data", str(synthetic_folder), "--split", str(tmp_path / "split.json"), "--out", str(out), "--variant",
            "vit_tiny", "--prompts-per-image", "2", "--iterations", "0", "--device", "cpu", "--quiet"]
    assert main(argv + ["--epochs", "1"]) == 0
    before = _snapshot(out)
    assert {"best.pth", "last.pth", "resume.pt", "run.json"} <= set(before)
    capsys.readouterr()
    tried: list[str] = []
    save = torch.save

    def full(obj, path, *args, **kwargs):
        if str(path).endswith(".pth.partial"):
            tried.append(str(path))
            Path(path).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    assert main(argv + ["--epochs", "2", "--resume"]) == 2
    target = Path(tried[0][: -len(".partial")]) if tried else None
    _assert_disk_full(capsys, tried, target, before, out)


# ---------------------------------------------------------------- a run killed at any moment

def _tiny_run(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mscseg.run", "--config", "tiny", "--out", str(out), *extra],
                            env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)


@pytest.mark.slow
def test_the_tiny_run_killed_at_random_moments_finishes_with_every_step_done(tmp_path, capsys):
    out = tmp_path / "results"
    rng = random.Random(22)
    moments = sorted(rng.uniform(5.0, 60.0) for _ in range(3))
    killed = []
    for moment in moments:
        process = _tiny_run(out)
        try:
            process.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            killed.append(round(moment, 1))
        process.stdout.close()
    final = _tiny_run(out)
    console, _ = final.communicate(timeout=900)
    assert final.returncode == 0, console
    print(f"killed at {killed} s of three attempts; the final run: {console.count(' done in ')} step(s) ran")
    settings = runner.load_config("tiny")
    steps = runner.build_steps(settings)
    entries = runner.plan(steps, settings, runner.Layout(out))
    assert all(e.state is runner.State.DONE for e in entries), [(e.step.name, e.state) for e in entries]
    assert all(json.loads((out / ".stamps" / f"{s.name}.json").read_text())["status"] == "done" for s in steps)
    assert leftovers(out) == [] and not list(out.rglob(LOCK_NAME))
    table1 = pd.read_csv(out / "semantic" / "sweep" / "table1.csv")
    assert sorted(table1["model"]) == sorted(settings.semantic.models) and table1.notna().all().all()
    table = pd.read_csv(out / "instance" / "instance_table.csv")
    from mscseg.steps import instance_methods

    methods = instance_methods(settings.instance)
    assert len(table) == len(methods) * len(settings.instance.evaluation.interpolations)
    assert set(table["method"]) == set(methods) and table[["mAP", "AP50", "AP75"]].notna().all().all()


def _images_full_on(monkeypatch) -> list[str]:
    """Every PNG and TIFF write of a ``.partial`` file fails after half a file, as a full disk does; the attempts."""
    import tifffile
    from PIL import Image

    tried: list[str] = []
    save, imwrite = Image.Image.save, tifffile.imwrite

    def fail(path) -> None:
        tried.append(str(path))
        Path(path).write_bytes(b"half an image")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_save(self, fp, *args, **kwargs):
        if str(fp).endswith(".partial"):
            fail(fp)
        return save(self, fp, *args, **kwargs)

    def full_imwrite(path, *args, **kwargs):
        if str(path).endswith(".partial"):
            fail(path)
        return imwrite(path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", full_save)
    monkeypatch.setattr(tifffile, "imwrite", full_imwrite)
    return tried


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_an_image_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, suffix):
    from data.imageio import read_labels, write_labels

    target = tmp_path / f"cells{suffix}"
    old = np.zeros((8, 9), np.int32)
    old[2:5, 3:7] = 1
    write_labels(target, old)
    before = target.read_bytes()
    tried = _images_full_on(monkeypatch)
    with pytest.raises(OSError) as raised:
        write_labels(target, old + 1)
    assert tried == [str(target) + ".partial"]
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert target.read_bytes() == before and np.array_equal(read_labels(target), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_predict_overlays_on_a_full_disk_stop_with_one_line_and_the_previous_outputs_unchanged(tmp_path, capsys, monkeypatch):
    from mscseg.predict import main

    argv = _predict_case(tmp_path, monkeypatch) + ["--out", str(tmp_path / "out")]
    out = tmp_path / "out"
    assert main(argv) == 0
    before = _snapshot(out)
    assert any(name.endswith(".png") for name in before)
    capsys.readouterr()
    tried = _images_full_on(monkeypatch)
    assert main(argv + ["--overwrite"]) == 2
    written = Path(tried[0][: -len(".partial")]).relative_to(out) if tried else Path()
    target = out.joinpath(*written.parts[1:]) if written.parts[0].startswith(".staging-") else out / written
    _assert_disk_full(capsys, tried, target, before, out)
