"""One training-run life cycle: the same five situations give the same outcome and words for every trainer.

Situations: a fresh folder, a foreign non-empty folder, the time budget reached (then the
same run without --resume), a resume, a resume with a changed setting. The trainers: the
Keras trainer (SegNet), Mask R-CNN and SAM fine-tuning, each on tiny synthetic images with
random weights, one epoch per call; and a framework-free stand-in that checks the rules alone.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import pytest

from data.dataset import in_memory
from data.lifecycle import (BUDGET_REACHED, FINISHED, INTERRUPTED, EpochSteps, RunFolderError, RunSpec, failed, open_run,
                            run_epochs)
from data.synthetic import generate

TINY_BUDGET = 1e-6  # minutes: reached by the first epoch


# ---------------------------------------------------------------- the trainers, called alike

def _stand_in(dataset, split, out: Path, epochs: int, resume: bool, max_minutes: float | None, seed: int) -> dict:
    """A framework-free trainer: a loss that falls by half each epoch, a JSON 'checkpoint'."""
    spec = RunSpec("toy", "toy", {"epochs": epochs, "seed": seed, "max_minutes": max_minutes}, dict(split), epochs,
                   ("seed",), ("run.json", "history.csv", "last.json"), resume_files=("last.json",), max_minutes=max_minutes)
    run = open_run(out, spec, resume, overwrite=False)
    if run.done:
        return run.record.to_dict()
    run.start({"note": "stand-in"})

    def save(epoch: int, improved: bool, monitored: float) -> None:
        (out / "last.json").write_text(json.dumps({"epoch": epoch}))

    steps = EpochSteps(train=lambda epoch: {"loss": 2.0 ** -epoch}, evaluate=lambda epoch: {"loss": 2.0 ** -epoch}, save=save)
    return run_epochs(run, steps)


def _keras(dataset, split, out: Path, epochs: int, resume: bool, max_minutes: float | None, seed: int) -> dict:
    from keras_semseg.train import train_model

    return train_model("segnet", dataset, split, out, resume=resume, quiet=True, image_size=32, epochs=epochs, batch_size=4,
                       encoder_weights=None, augment=False, model_options={"base_filters": 8}, seed=seed,
                       max_minutes=max_minutes)


def _maskrcnn(dataset, split, out: Path, epochs: int, resume: bool, max_minutes: float | None, seed: int) -> dict:
    from torch_instseg.maskrcnn import train_maskrcnn

    small = {"box_batch_size_per_image": 32, "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
             "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 30, "head_channels": 32}
    return train_maskrcnn(dataset, split, out, resume=resume, quiet=True, device="cpu", image_size=64, weights="none",
                          batch_size=2, epochs=epochs, seed=seed, max_minutes=max_minutes, model_options=small)


def _sam_finetune(dataset, split, out: Path, epochs: int, resume: bool, max_minutes: float | None, seed: int) -> dict:
    from torch_instseg.sam_finetune import finetune_sam

    settings = dict(variant="vit_tiny", checkpoint="none", epochs=epochs, lr=3e-3, prompts_per_image=2, iterations=0,
                    seed=seed, max_minutes=max_minutes)
    return finetune_sam(dataset, split, out, settings, device="cpu", resume=resume)


TRAINERS: dict[str, Callable[..., dict]] = {"stand-in": _stand_in, "keras": _keras, "maskrcnn": _maskrcnn,
                                            "sam_finetune": _sam_finetune}
NEEDS = {"keras": "tensorflow", "maskrcnn": "torchvision", "sam_finetune": "segment_anything"}


def _files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def _history_epochs(folder: Path) -> list[int]:
    import pandas as pd

    return pd.read_csv(folder / "history.csv")["epoch"].tolist()


def _refusal(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(RunFolderError) as caught:
        call()
    return type(caught.value).__name__, str(caught.value)


@pytest.fixture(scope="module", params=list(TRAINERS), ids=list(TRAINERS))
def outcomes(request, tmp_path_factory) -> dict[str, Any]:
    """What each situation gave one trainer, in the order a user meets them."""
    name = request.param
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    if name != "stand-in" and name != "keras":
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        request.addfinalizer(lambda: torch.set_num_threads(threads))
    train = TRAINERS[name]
    samples = generate(4, 64, "sparse", seed=11)
    dataset = in_memory(samples, root="memory://lifecycle")
    split = {"train": [s.name for s in samples[:3]], "val": [samples[3].name], "seed": 0}
    root = tmp_path_factory.mktemp(f"lifecycle_{name}")
    seen: dict[str, Any] = {"root": root}

    fresh = root / "fresh"
    seen["fresh"] = (train(dataset, split, fresh, 1, False, None, 0), _history_epochs(fresh))

    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    seen["foreign"] = (*_refusal(lambda: train(dataset, split, foreign, 1, False, None, 0)), sorted(_files(foreign)))

    run = root / "run"
    budget = train(dataset, split, run, 2, False, TINY_BUDGET, 0)
    before = _files(run)
    again = _refusal(lambda: train(dataset, split, run, 2, False, TINY_BUDGET, 0))
    seen["budget"] = (budget, _history_epochs(run), again, _files(run) == before)

    resumed = train(dataset, split, run, 2, True, None, 0)
    seen["resume"] = (resumed, _history_epochs(run), budget["wall_time_s"])

    before = _files(run)
    seen["changed"] = (*_refusal(lambda: train(dataset, split, run, 3, True, None, 1)), _files(run) == before)
    return seen


@pytest.mark.slow
def test_a_fresh_folder_trains_and_finishes(outcomes):
    record, epochs = outcomes["fresh"]
    assert (record["status"], record["epochs"], record["epochs_done"], epochs) == (FINISHED, 1, 1, [1])
    saved = json.loads((outcomes["root"] / "fresh" / "run.json").read_text())
    assert saved["status"] == FINISHED and saved["best_epoch"] == 1 and saved["wall_time_s"] > 0
    assert saved["details"]["train_time_s"] >= 0 and saved["details"]["cpu_time_s"] >= 0


@pytest.mark.slow
def test_a_foreign_non_empty_folder_is_refused_in_the_same_words(outcomes):
    folder = outcomes["root"] / "foreign"
    assert outcomes["foreign"] == ("RunFolderError", f"{folder}: folder is not empty and holds no training run; "
                                                     "choose another --out or pass --overwrite", ["notes.txt"])


@pytest.mark.slow
def test_the_time_budget_stops_after_the_epoch_that_passes_it(outcomes):
    record, epochs, again, untouched = outcomes["budget"]
    folder = outcomes["root"] / "run"
    assert (record["status"], record["epochs"], record["epochs_done"], epochs) == (BUDGET_REACHED, 2, 1, [1])
    assert record["wall_time_s"] > TINY_BUDGET * 60
    model = record["model"]
    assert again == ("RunFolderError", f"{folder}: holds an unfinished {model} run (1 of 2 epochs, status {BUDGET_REACHED}); "
                                       "pass --resume to continue it or --overwrite to start again")
    assert untouched


@pytest.mark.slow
def test_a_resume_continues_at_the_next_epoch_and_adds_up_the_wall_time(outcomes):
    record, epochs, wall_before = outcomes["resume"]
    assert (record["status"], record["epochs"], record["epochs_done"], epochs) == (FINISHED, 2, 2, [1, 2])
    assert record["wall_time_s"] > wall_before


@pytest.mark.slow
def test_a_resume_with_a_changed_setting_is_refused_in_the_same_words(outcomes):
    folder = outcomes["root"] / "run"
    assert outcomes["changed"] == ("RunFolderError", f"{folder / 'run.json'}: cannot resume with other settings: seed=0 (now 1); "
                                                     "pass the same ones, or start over with --overwrite", True)


# ---------------------------------------------------------------- the rules alone (framework-free)

def _toy(tmp_path: Path) -> tuple[Callable[..., dict], dict]:
    split = {"train": ["a"], "val": ["b"]}
    return (lambda out, epochs=1, resume=False, max_minutes=None, seed=0:
            _stand_in(None, split, out, epochs, resume, max_minutes, seed)), split


def test_a_finished_run_is_refused_without_resume_and_returned_as_it_is_with_it(tmp_path):
    train, _ = _toy(tmp_path)
    out = tmp_path / "run"
    record = train(out, epochs=2)
    before = _files(out)
    with pytest.raises(RunFolderError, match=r"holds a finished toy run \(2 epochs\); pass --resume with more epochs"):
        train(out, epochs=2)
    assert train(out, epochs=2, resume=True) == record and _files(out) == before
    assert train(out, epochs=3, resume=True)["epochs_done"] == 3


def test_resume_without_a_run_starts_one_and_a_missing_checkpoint_is_named(tmp_path):
    train, _ = _toy(tmp_path)
    assert train(tmp_path / "new", resume=True)["status"] == FINISHED
    (tmp_path / "new" / "last.json").unlink()
    with pytest.raises(RunFolderError, match=r"last.json: missing, cannot resume; pass --overwrite to start again"):
        train(tmp_path / "new", epochs=2, resume=True)


def test_another_trainers_run_and_a_broken_record_are_refused(tmp_path):
    train, split = _toy(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"trainer": "keras", "model": "unet", "settings": {}}))
    with pytest.raises(RunFolderError, match="run.json: holds a keras run, not a toy run; choose another --out"):
        train(out, resume=True)
    (out / "run.json").write_text("{")
    with pytest.raises(RunFolderError, match="run.json is not valid JSON .*; pass --overwrite to start again"):
        train(out, resume=True)


def test_overwrite_replaces_only_the_runs_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "last.json").write_text("old")
    spec = RunSpec("toy", "toy", {}, {}, 1, (), ("run.json", "history.csv", "last.json"))
    run = open_run(out, spec, overwrite=True)
    run.start()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "run.json"]


def test_interrupt_and_failure_are_recorded_before_they_propagate(tmp_path):
    from data.errors import MscsegError

    spec = RunSpec("toy", "toy", {}, {}, 3, ())

    def interrupt(epoch: int) -> dict:
        raise KeyboardInterrupt

    def bad(epoch: int) -> dict:
        raise MscsegError("training diverged at epoch 1")

    for name, train, status in (("a", interrupt, INTERRUPTED), ("b", bad, failed("training diverged at epoch 1"))):
        run = open_run(tmp_path / name, spec)
        run.start()
        with pytest.raises((KeyboardInterrupt, MscsegError)):
            run_epochs(run, EpochSteps(train=train, evaluate=lambda epoch: None, save=lambda *args: None))
        assert json.loads((tmp_path / name / "run.json").read_text())["status"] == status


def test_the_best_epoch_is_the_lowest_monitored_loss_and_nan_never_wins(tmp_path):
    losses = {1: 0.5, 2: math.nan, 3: 0.2, 4: 0.3}
    saved = []
    run = open_run(tmp_path / "run", RunSpec("toy", "toy", {}, {}, 4, ()))
    run.start()
    record = run_epochs(run, EpochSteps(train=lambda e: {"loss": losses[e]}, evaluate=lambda e: None,
                                        save=lambda e, improved, monitored: saved.append((e, improved))))
    assert (record["best_epoch"], record["best_loss"]) == (3, 0.2)
    assert saved == [(1, True), (2, False), (3, True), (4, False)]
