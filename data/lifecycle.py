"""One life cycle for every training run (Keras models, Mask R-CNN, SAM fine-tuning); imports no framework.

``open_run`` opens or resumes a run folder and refuses, before anything is written, what
every trainer refuses in the same words (``RunFolderError``):

- a non-empty folder that holds no training run (``--overwrite`` to use it anyway);
- a run of another trainer, or a ``run.json`` that cannot be read;
- a finished run, or an unfinished one, without ``--resume`` (nothing is written);
- a resume whose settings in the trainer's ``must_match`` or whose split changed
  (``data.run_record.check_resume``), or whose checkpoint files are missing.

``--resume`` where no run was started (a missing or empty folder) starts a new run; a
finished run resumed with the same number of epochs is returned as it is (``done``).
``TrainingRun.start`` writes a new run's ``run.json`` with status 'running'; ``end_epoch`` saves the
checkpoint through the trainer, then ``history.csv`` and ``run.json``; ``finish`` writes
the final status. ``run_epochs`` is the epoch loop for trainers that drive their own
epochs; a Keras callback calls ``end_epoch`` from ``fit``.

Time budget (``max_minutes``): the wall time of the whole run, summed over resumes
(``run.json``'s ``wall_time_s``: each call counts from the opening of its run folder to
its end). After each epoch that passes it, the run stops with status
'stopped: time budget reached' (the last epoch is never cut short); resume it with a
larger ``max_minutes`` (a setting that a resume may change).

Status words: 'running', 'finished', 'stopped: time budget reached', 'stopped: interrupted',
'stopped: <trainer's reason>' and 'failed: <why>'.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .errors import MscsegError
from .lock import has_content
from .run_record import HISTORY_CSV, RUN_JSON, RunRecord, check_resume, now, read_record

RUNNING = "running"
FINISHED = "finished"
BUDGET_REACHED = "stopped: time budget reached"
INTERRUPTED = "stopped: interrupted"


def failed(why: str) -> str:
    """The status of a run that stopped on an error: 'failed: <why>'."""
    return f"failed: {why}"


class RunFolderError(MscsegError):
    """A run folder that this call may not start, resume or overwrite (names the folder or file)."""


@dataclass
class RunSpec:
    """What a trainer tells the life cycle about one run.

    trainer: 'keras', 'maskrcnn' or 'sam_finetune'; model: the model's name in run.json;
    settings: every setting as run.json records it; split: the split record ({"train",
    "val", ...}); must_match: the settings a resume may not change; files: what the run
    writes in its folder (removed by ``overwrite``), folders likewise; resume_files: the
    checkpoint files a resume after at least one epoch needs; max_minutes: the time budget.
    """

    trainer: str
    model: str
    settings: dict[str, Any]
    split: dict[str, Any]
    epochs: int
    must_match: tuple[str, ...]
    files: tuple[str, ...] = (RUN_JSON, HISTORY_CSV)
    resume_files: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    max_minutes: float | None = None


def previous_run(out_dir: Path, spec: RunSpec, resume: bool, overwrite: bool) -> RunRecord | None:
    """The run to continue, or None to start one; ``RunFolderError`` for whatever this call may not touch."""
    if not (out_dir / RUN_JSON).is_file():
        if not overwrite and out_dir.is_dir() and has_content(out_dir):
            raise RunFolderError("folder is not empty and holds no training run; choose another --out or pass --overwrite", out_dir)
        return None
    if overwrite:
        return None
    try:
        previous = read_record(out_dir)
    except MscsegError as error:
        raise RunFolderError(f"{error.problem}; pass --overwrite to start again", error.path) from None
    if previous.trainer != spec.trainer:
        raise RunFolderError(f"holds a {previous.trainer} run, not a {spec.trainer} run; choose another --out or pass --overwrite",
                             out_dir / RUN_JSON)
    if not resume:
        if previous.status == FINISHED:
            raise RunFolderError(f"holds a finished {previous.model} run ({previous.epochs_done} epochs); pass --resume with "
                                 "more epochs to extend it or --overwrite to replace it (nothing was written)", out_dir)
        raise RunFolderError(f"holds an unfinished {previous.model} run ({previous.epochs_done} of {previous.epochs} epochs, "
                             f"status {previous.status}); pass --resume to continue it or --overwrite to start again", out_dir)
    try:
        check_resume(previous, spec.settings, spec.must_match, spec.split, out_dir / RUN_JSON)
    except MscsegError as error:
        raise RunFolderError(error.problem, error.path) from None
    for name in spec.resume_files if previous.epochs_done > 0 else ():
        if not (out_dir / name).is_file():
            raise RunFolderError("missing, cannot resume; pass --overwrite to start again", out_dir / name)
    return previous


def _history_rows(path: Path, epochs_done: int) -> list[dict]:
    if not path.is_file() or epochs_done == 0:
        return []
    import pandas as pd

    frame = pd.read_csv(path)
    return frame[frame["epoch"] <= epochs_done].to_dict("records")


@dataclass
class TrainingRun:
    """One run folder from opening to the final status (``open_run`` makes it).

    writes: False on the ranks of a distributed run that are not the first (nothing written).
    Times in seconds; ``history`` holds one row per finished epoch (what history.csv holds).
    """

    out_dir: Path
    spec: RunSpec
    previous: RunRecord | None
    overwrite: bool = False
    writes: bool = True
    record: RunRecord = field(init=False)
    history: list[dict] = field(init=False)
    status: str = field(init=False, default=RUNNING)
    started: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._clock, self._cpu = time.perf_counter(), time.process_time()
        self.record = self.previous or RunRecord(self.spec.trainer, self.spec.model, {}, self.spec.split)
        self._wall_before = float(self.record.wall_time_s) if self.previous else 0.0
        self._cpu_before = float(self.record.details.get("cpu_time_s", 0.0))
        self.history = _history_rows(self.out_dir / HISTORY_CSV, self.record.epochs_done) if self.previous else []
        self.best_epoch = self.record.best_epoch
        self.best_loss = math.inf if self.record.best_loss is None else float(self.record.best_loss)

    @property
    def start_epoch(self) -> int:
        """Epochs already trained (0 for a new run): the next epoch is ``start_epoch + 1``."""
        return self.record.epochs_done

    @property
    def done(self) -> bool:
        """True when a finished run was resumed with no more epochs to train (nothing to do)."""
        return self.previous is not None and self.previous.status == FINISHED and self.previous.epochs_done >= self.spec.epochs

    def wall_time_s(self) -> float:
        """The run's wall time so far, earlier calls included (seconds)."""
        return self._wall_before + time.perf_counter() - self._clock

    def budget_reached(self) -> bool:
        """True once the whole run's wall time passes ``max_minutes``."""
        return self.spec.max_minutes is not None and self.wall_time_s() > 60.0 * float(self.spec.max_minutes)

    def start(self, details: Mapping[str, Any] | None = None) -> RunRecord:
        """Remove the files of a replaced run (``overwrite``); a new run writes run.json with status 'running' now,
        a resumed one at its first epoch (so a resume that fails before leaves its folder as it was)."""
        if self.overwrite and self.writes:
            for name in self.spec.files:
                (self.out_dir / name).unlink(missing_ok=True)
            for name in self.spec.folders:
                shutil.rmtree(self.out_dir / name, ignore_errors=True)
        record = self.record
        record.settings, record.split, record.epochs = dict(self.spec.settings), dict(self.spec.split), int(self.spec.epochs)
        record.status = self.status = RUNNING
        record.details.update(details or {})
        self.started = True
        if self.previous is None:
            self._write()
        return record

    def end_epoch(self, epoch: int, row: Mapping[str, Any], monitored: float, save: Callable[[bool], None]) -> bool:
        """Book a finished epoch: ``save(improved)`` writes the trainer's checkpoint, then history.csv and run.json.

        row: the epoch's history row (with ``time_s``); monitored: the loss that picks the
        best epoch (lower is better). Returns False when the run must stop here (time budget).
        """
        improved = math.isfinite(monitored) and monitored < self.best_loss
        if improved:
            self.best_epoch, self.best_loss = int(epoch), float(monitored)
        if self.writes:
            save(improved)
        self.history.append(dict(row))
        times = [float(r["time_s"]) for r in self.history if "time_s" in r]
        self.record.progress(epoch, self.best_epoch, self.best_loss, self.wall_time_s(), times, RUNNING)
        self.record.details["train_time_s"] = round(sum(times), 3)
        self._write(history=True)
        if self.budget_reached() and epoch < self.spec.epochs:
            self.status = BUDGET_REACHED
            return False
        return True

    def stop(self, status: str, **details: Any) -> None:
        """Record a stop or failure (``status``) and its details now."""
        self.status = self.record.status = status
        self.record.details.update(details)
        self._write()

    def finish(self) -> dict[str, Any]:
        """Write the final status ('finished' or 'stopped: time budget reached') and wall time; run.json's content."""
        self.record.status = self.status = FINISHED if self.status == RUNNING else self.status
        self.record.updated = now()
        self._write(history=bool(self.history))
        return self.record.to_dict()

    @contextlib.contextmanager
    def guard(self) -> Iterator["TrainingRun"]:
        """Record 'stopped: interrupted' (Ctrl-C) or 'failed: <problem>' (an ``MscsegError``) before it propagates."""
        try:
            yield self
        except KeyboardInterrupt:
            if self.started:
                self.stop(INTERRUPTED)
            raise
        except MscsegError as error:
            if self.started and not self.status.startswith(("stopped:", "failed:")):
                self.stop(failed(error.problem))
            raise

    def _write(self, history: bool = False) -> None:
        self.record.wall_time_s = round(self.wall_time_s(), 3)
        self.record.details["cpu_time_s"] = round(self._cpu_before + time.process_time() - self._cpu, 3)
        if self.writes:
            self.record.write(self.out_dir, self.history if history else None)


def summary(record: Mapping[str, Any], out_dir: str | Path) -> str:
    """The one line a trainer's command prints at its end: status, epochs, best epoch and loss, wall time."""
    return (f"{out_dir}: {record['status']} after {record['epochs_done']} of {record['epochs']} epochs; best epoch "
            f"{record['best_epoch']} (validation loss {record['best_loss']}); {float(record['wall_time_s']):.0f} s")


@dataclass
class RunControl:
    """How a trainer treats its run folder and what it shows: ``resume``, ``overwrite``, ``quiet`` and the
    split file recorded in run.json (``split_path``)."""

    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    split_path: str | Path | None = None

    @classmethod
    def taken_from(cls, control: "RunControl | None", keywords: dict[str, Any]) -> "RunControl":
        """``control`` (default ``RunControl()``) with its fields named in ``keywords`` replaced; those keys are
        removed from ``keywords`` (a trainer's other keywords are its settings)."""
        from dataclasses import fields, replace

        given = {f.name: keywords.pop(f.name) for f in fields(cls) if f.name in keywords}
        return replace(control or cls(), **given)


def open_run(out_dir: str | Path, spec: RunSpec, resume: bool = False, overwrite: bool = False,
             writes: bool = True) -> TrainingRun:
    """Check the run folder (see the module's refusals) and return the run to start or continue; writes nothing."""
    out_dir = Path(out_dir)
    return TrainingRun(out_dir, spec, previous_run(out_dir, spec, resume, overwrite), overwrite, writes)


@dataclass
class EpochSteps:
    """What a trainer supplies to ``run_epochs`` (epochs are numbered from 1).

    train(epoch) -> mean training losses {"loss": ..., ...}; evaluate(epoch) -> mean
    validation losses or None (no validation images); row(epoch, train, val, seconds) -> the
    history row; adjust(epoch, monitored): after evaluation, before the checkpoint (an lr
    scheduler's step); save(epoch, improved, monitored): the last checkpoint, and the best one
    when improved (monitored: the loss that picks the best epoch).
    """

    train: Callable[[int], Mapping[str, float]]
    evaluate: Callable[[int], Mapping[str, float] | None]
    save: Callable[[int, bool, float], None]
    row: Callable[[int, Mapping[str, float], Mapping[str, float] | None, float], dict] | None = None
    adjust: Callable[[int, float], None] | None = None


def default_row(epoch: int, train: Mapping[str, float], val: Mapping[str, float] | None, seconds: float) -> dict:
    """``epoch, train_<name>..., val_<name>..., time_s``."""
    return {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()}, **{f"val_{k}": v for k, v in (val or {}).items()},
            "time_s": round(seconds, 3)}


def monitored_loss(train: Mapping[str, float], val: Mapping[str, float] | None) -> float:
    """The validation loss, or the training loss without validation images (inf when neither is known)."""
    return float((val if val else train).get("loss", math.inf))


def run_epochs(run: TrainingRun, steps: EpochSteps, show: bool = False) -> dict[str, Any]:
    """Train from ``run.start_epoch + 1`` to the last epoch or the time budget; returns run.json's content.

    show: one line per epoch on stdout.
    """
    with run.guard():
        for epoch in range(run.start_epoch + 1, run.spec.epochs + 1):
            began = time.perf_counter()
            train = steps.train(epoch)
            val = steps.evaluate(epoch)
            row = (steps.row or default_row)(epoch, train, val, time.perf_counter() - began)
            monitored = monitored_loss(train, val)
            if steps.adjust is not None:
                steps.adjust(epoch, monitored)
            go_on = run.end_epoch(epoch, row, monitored, lambda improved: steps.save(epoch, improved, monitored))
            if show:
                print(f"{run.spec.model} epoch {epoch}/{run.spec.epochs}: loss {train.get('loss', math.nan):.4f}, "
                      f"validation loss {(val or {}).get('loss', math.nan):.4f} ({row.get('time_s', 0.0):.1f} s)", flush=True)
            if not go_on:
                break
        return run.finish()
