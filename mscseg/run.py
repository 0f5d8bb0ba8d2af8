"""Run both studies end to end as ordered steps with stamps (``python -m mscseg.run``, ``mscseg-run``).

Steps (in order; a study that is disabled in the config has none; declared in ``mscseg.steps``):

    data                    synthetic data written (or the dataset read and checked), data/summary_<study>.csv
    split                   split.json (semantic) and instance/split.json
    semantic_train_<model>  semantic/<model>/ (one per model in the config; TensorFlow, own subprocess)
    semantic_sweep          semantic/masks/ (validation masks), semantic/sweep/
    semantic_stats          semantic/stats/
    semantic_figures        figures/fig1..fig4
    instance_train          instance/maskrcnn/ (torch, own subprocess)
    instance_predict        instance/predictions/gt.json, maskrcnn.json (torch, own subprocess)
    instance_sam            instance/predictions/sam_<mode>.json (torch, own subprocess)
    instance_sam_finetune   instance/sam_finetune/, instance/predictions/sam_ft_*.json (torch, own subprocess)
    instance_peer_<peer>    instance/<peer>/, instance/predictions/<peer>.json (one per enabled peer: cellpose on
                            torch, stardist on TensorFlow, each in its own subprocess; <peer>.absent.json instead,
                            with the reason, when the peer's package cannot be imported: the run goes on)
    instance_eval           instance/eval/<method>/<interpolation>/
    instance_table          instance/instance_table.csv
    instance_stats          instance/stats/
    instance_figures        figures/instance
    report                  report.html

Each step writes ``.stamps/<step>.json`` (its stamp: a hash of the settings it reads and of
its inputs' stamps, and the run ids of its inputs) and ``logs/<step>.log`` (everything it
printed). On a new run:

- a step whose stamp matches its settings and inputs is skipped (up to date);
- a step stopped part-way resumes (training continues from its last saved epoch);
- a step whose settings changed, or whose inputs changed or are remade, would replace
  finished outputs: the run stops before doing anything and names every such step. Pass
  ``--overwrite`` to rerun them, or ``--out NEW_FOLDER`` to keep the old results.

A step that needs TensorFlow or torch runs in a subprocess of its own (``python -m mscseg.step``):
the two frameworks never share a process, and each model's memory is returned when its step ends.
``report.html`` is a view of the results, remade whenever it is out of date.
One process writes a results folder at a time (``data.lock``: a kernel lock its step processes inherit);
a second run on a busy folder exits 2 naming the holder. A run killed at any moment finishes when started
again; the staging folders and partial files of the killed run are removed first, with one note.
Exit status: 0 done, 2 bad input or settings, or a step's process killed (crash signal, out of
memory), 1 a crash (traceback in the step's log), 130 interrupted (rerun the same command to resume).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

from data.cli import make_parser, one_line, run_cli
from data.errors import MscsegError
from data.lock import held_fds, holder, locked

from .config import Settings, check_inputs, from_mapping, load_config
from .errors import RunError
from .layout import Layout
from .run_plan import (  # noqa: F401  (re-exported: mscseg.run is the public module)
    Action, Planned, State, conflicts_message, describe_changes, plan, read_stamp, write_stamp,
)
from .steps import Framework, Step, settings_hash, stamp_hashes

STEP_FACTORY = "mscseg.steps:build_steps"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
OWN_STOP_S = 5.0      # a Ctrl-C at the terminal reaches the child too
STOP_GRACE_S = 60.0


def load_factory(spec: str) -> Callable[[Settings], list[Step]]:
    """The function ``module:name`` that declares the steps for some settings."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def build_steps(settings: Settings) -> list[Step]:
    """The ordered steps for these settings, from ``STEP_FACTORY``."""
    return load_factory(STEP_FACTORY)(settings)


def settings_from_config_json(path: Path) -> Settings:
    """The settings a run was started with, from its ``config.json``."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunError(f"cannot read the run's settings ({error})", path) from None
    data = dict(content.get("settings", {}))
    source = data.pop("source", "") or str(path)
    return from_mapping(data, name=data.get("name", "run"), source=source)


# ---------------------------------------------------------------- running one step

class StepError(Exception):
    """A step that did not finish: ``kind`` is 'failed' (bad input), 'crashed' (a bug) or 'killed' (its process died)."""

    def __init__(self, kind: str, message: str, exit_code: int):
        super().__init__(message)
        self.kind, self.message, self.exit_code = kind, message, exit_code


@contextlib.contextmanager
def capture_output(log_path: Path) -> Iterator[TextIO]:
    """Send stdout, stderr (Python and C level) and Python logging to ``log_path`` (appended)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")
    saved_fds: list[tuple[int, int]] = []
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            saved_fds.append((fd, os.dup(fd)))
            os.dup2(log.fileno(), fd)
    saved_streams = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = log
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger()
    saved_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)
    try:
        yield log
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(saved_level)
        with contextlib.suppress(Exception):
            log.flush()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in saved_fds:
            os.dup2(saved, fd)
            os.close(saved)
        log.close()


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_step(entry: Planned, settings: Settings, layout: Layout, expected: str) -> float:
    """Run one planned step with its output in its log; writes its stamp. Returns the wall time in seconds.

    Raises ``StepError`` when it does not finish, ``KeyboardInterrupt`` when interrupted.
    """
    step = entry.step
    if entry.overwrite or (entry.state in (State.CHANGED, State.STALE, State.FOREIGN) and not step.derived):
        _remove(step.outputs(layout))
    stamp = {
        "step": step.name,
        "status": "running",
        "id": uuid.uuid4().hex,
        "stamp": expected,
        "settings": step.settings(settings),
        "settings_hash": settings_hash(step, settings),
        "inputs": {name: (read_stamp(layout, name) or {}).get("id") for name in step.inputs},
        "framework": step.framework.value,
        "started": _now(),
        "resumed": entry.resume,
        "log": layout.log(step.name).relative_to(layout.root).as_posix(),
    }
    write_stamp(layout, step.name, stamp)
    log_path = layout.log(step.name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    overwrite = entry.overwrite or not step.resumable
    started, cpu_started = time.perf_counter(), time.process_time()
    with open(log_path, "a", encoding="utf-8") as log:
        print(f"=== {step.name} started {stamp['started']}" + (" (resuming)" if entry.resume else "")
              + (f" in its own process ({step.framework.value})" if step.framework is not Framework.NONE else "")
              + " ===", file=log)
    try:
        if step.framework is Framework.NONE:
            _run_here(step, settings, layout, entry.resume, overwrite, log_path)
        else:
            _run_in_subprocess(step, layout, entry.resume, overwrite, log_path, settings)
    except BaseException as error:
        wall = time.perf_counter() - started
        with open(log_path, "a", encoding="utf-8") as log:
            print(f"=== {step.name} stopped after {wall:.1f} s ===", file=log)
        interrupted = isinstance(error, KeyboardInterrupt)
        stamp.update(status="interrupted" if interrupted else "failed", stopped=_now(),
                     error="interrupted" if interrupted else one_line(error, 300))
        write_stamp(layout, step.name, stamp)
        raise
    wall = time.perf_counter() - started
    with open(log_path, "a", encoding="utf-8") as log:
        print(f"=== {step.name} finished in {wall:.1f} s ===", file=log)
    stamp.update(status="done", finished=_now(), wall_s=round(wall, 3), cpu_s=round(time.process_time() - cpu_started, 3))
    write_stamp(layout, step.name, stamp)
    return wall


def _run_here(step: Step, settings: Settings, layout: Layout, resume: bool, overwrite: bool, log_path: Path) -> None:
    with capture_output(log_path) as log:
        try:
            step.action(step.context(settings, layout, resume=resume, overwrite=overwrite))
        except KeyboardInterrupt:
            raise
        except (MscsegError, OSError) as error:
            print(f"error: {one_line(error)}", file=log)
            raise StepError("failed", one_line(error), 2) from None
        except Exception as error:  # noqa: BLE001 - a crash in a step is reported with its log
            traceback.print_exc(file=log)
            raise StepError("crashed", f"{type(error).__name__}: {one_line(error, 160)}", 1) from None


def step_command(step: Step, layout: Layout, resume: bool, overwrite: bool) -> list[str]:
    """The command that runs ``step`` in a process of its own."""
    command = [sys.executable, "-m", "mscseg.step", step.name, "--out", str(layout.root), "--steps", STEP_FACTORY]
    return command + (["--resume"] if resume else []) + (["--overwrite"] if overwrite else [])


def _child_environment() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(PACKAGE_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _run_in_subprocess(step: Step, layout: Layout, resume: bool, overwrite: bool, log_path: Path,
                       settings: Settings | None = None) -> None:
    """Run ``step`` in ``python -m mscseg.step`` (under torchrun, or on chosen GPUs, when the step's ``devices``
    setting asks for more than one); its output goes to the log. Ctrl-C stops the child too.

    The child inherits the results folder's lock, so a folder whose runner was killed stays busy while the
    step process it started still writes."""
    command, env = step_command(step, layout, resume, overwrite), _child_environment()
    if settings is not None and step.devices is not None:
        command, env = on_devices(step, settings, command, env, log_path)
    with open(log_path, "a", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   pass_fds=held_fds())
        try:
            code = process.wait()
        except KeyboardInterrupt:
            _stop(process)
            raise
    if code == 0:
        return
    if code == 130 or code == -signal.SIGINT:
        raise KeyboardInterrupt
    if code == 2:
        raise StepError("failed", _last_error_line(log_path) or "bad input (see its log)", 2)
    if code == 1:
        raise StepError("crashed", _last_exception(log_path), 1)
    raise StepError("killed", _signal_text(code), 2)


def on_devices(step: Step, settings: Settings, command: list[str], env: dict[str, str],
               log_path: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """``command`` and ``env`` for the device count of ``step.devices`` (``mscseg.devices``): torch steps under
    torchrun with one process per device; TensorFlow steps shown the first N GPUs. One line in the log says which."""
    from .devices import first_gpus, resolve_devices, torchrun_command, visible_gpus
    from .steps import setting_value

    wanted = setting_value(settings, step.devices)
    gpus = visible_gpus(env)
    count = resolve_devices(wanted, gpus)
    if step.framework is Framework.TORCH and count > 1:
        command = torchrun_command(command, count)
        note = f"{count} processes under torchrun ({'one per GPU, nccl' if gpus else 'CPU, gloo'}; {step.devices}: {wanted})"
    elif step.framework is Framework.TENSORFLOW and gpus and wanted != "auto":
        env = {**env, "CUDA_VISIBLE_DEVICES": first_gpus(count, env)}
        note = f"GPUs {env['CUDA_VISIBLE_DEVICES']} ({step.devices}: {wanted}; MirroredStrategy when more than one)"
    else:
        note = f"one process, {'every visible GPU' if gpus else 'no GPU'} ({step.devices}: {wanted})" \
            if step.framework is Framework.TENSORFLOW else f"one process ({step.devices}: {wanted})"
    if log_path is not None:
        with open(log_path, "a", encoding="utf-8") as log:
            print(f"devices: {note}", file=log)
    return command, env


def _stop(process: subprocess.Popen) -> None:
    """Let the child stop on the terminal's Ctrl-C (it saves its state); else send it one; kill it if it hangs."""
    for ask in (False, True):
        try:
            process.wait(timeout=OWN_STOP_S if not ask else STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            if ask:
                break
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
    process.kill()
    process.wait()


def _signal_text(code: int) -> str:
    number = -code if code < 0 else code - 128 if code > 128 else None
    try:
        name = signal.Signals(number).name if number else f"exit status {code}"
    except ValueError:
        name = f"signal {number}"
    hint = "; killed, the machine may have run out of memory" if number == signal.SIGKILL else ""
    return f"its process died ({name}{hint})"


def _log_lines(log_path: Path) -> list[str]:
    try:
        return log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _last_error_line(log_path: Path) -> str:
    lines = [line for line in _log_lines(log_path) if line.startswith("error: ")]
    return lines[-1][len("error: "):] if lines else ""


def _last_exception(log_path: Path) -> str:
    lines = [line for line in _log_lines(log_path) if line and not line.startswith((" ", "===", "Traceback"))]
    return lines[-1] if lines else "unknown error"


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# ---------------------------------------------------------------- pretrained weights, checked before any step runs

def check_weights(settings: Settings, running: set[str]) -> None:
    """Find (or fetch, when online) the pretrained files the steps about to run need; one message lists every
    missing file, and a corrupt one stops the run before any step (see ``mscseg.pretrained``)."""
    from .pretrained import check_pretrained

    check_pretrained(settings, running)


# ---------------------------------------------------------------- config.json

def write_config_json(settings: Settings, layout: Layout, argv: Sequence[str], steps: Sequence[str] = ()) -> None:
    from data.outputs import write_json
    from data.run_record import library_versions

    write_json(layout.config_json, {
        "settings": settings.to_dict(),
        "steps": list(steps),
        "versions": library_versions(),
        "command": ["mscseg-run", *argv],
        "written": _now(),
    })


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "mscseg-run",
        description="Reproduce both studies end to end: data, split, semantic training/sweep/statistics/figures, "
        "instance training/SAM/evaluation/statistics/figures, report.html. Without --config: the 'small' preset "
        "(synthetic data, CPU, random weights).",
        epilog="Finished steps are skipped; a stopped run resumes where it stopped when run again. "
        "Changed settings that would replace finished outputs stop the run until you pass --overwrite "
        "(or choose a new --out).",
    )
    parser.add_argument("--config", help="YAML/JSON settings file or preset name (paper, small, tiny); default: small")
    parser.add_argument("--out", type=Path, help="results folder (default results/<config name>)")
    parser.add_argument("--from", dest="from_step", metavar="STEP", help="run this step and every later one (reruns them even if up to date when --overwrite is given)")
    parser.add_argument("--only", action="append", metavar="STEP", help="run only this step (repeatable); its inputs must be finished")
    parser.add_argument("--list", action="store_true", help="list the steps and their state, run nothing")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing finished outputs of steps whose settings or inputs changed, and of steps named by --only/--from")
    return parser


def _select(steps: list[Step], from_step: str | None, only: list[str] | None) -> tuple[set[str], set[str]]:
    names = [step.name for step in steps]
    for name in ([from_step] if from_step else []) + (only or []):
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RunError(f"unknown step '{name}'{hint}; steps of this config: {', '.join(names)}")
    if from_step and only:
        raise RunError("use either --from or --only, not both")
    if only:
        return set(only), set(only)
    if from_step:
        chosen = set(names[names.index(from_step):])
        return chosen, chosen
    return set(names), set()


WILL = {Action.RUN: "will run", Action.SKIP: "skip", Action.CONFLICT: "needs --overwrite"}


def print_list(entries: list[Planned], layout: Layout, out: TextIO) -> None:
    width = _name_width(entries)
    busy = holder(layout.root) if layout.root.is_dir() else None
    using = f" (in use by process {busy.get('pid', '?')}: {busy.get('command', '')})" if busy is not None else ""
    print(f"steps of {layout.root}{using}:", file=out)
    for entry in entries:
        stamp = read_stamp(layout, entry.step.name) or {}
        when = f"  ({_duration(stamp['wall_s'])}, {stamp.get('finished', '')})" if stamp.get("status") == "done" and "wall_s" in stamp else ""
        note = f" - {entry.note}" if entry.note else ""
        print(f"  {entry.step.name:<{width}}  {entry.state.value:<8} {WILL[entry.action]}{note}{when}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    console = sys.stdout
    caller_cwd = os.environ.get("MSCSEG_CALLER_CWD")
    if caller_cwd and Path(caller_cwd).is_dir():
        os.chdir(caller_cwd)
    settings = load_config(args.config)
    layout = Layout(Path(args.out) if args.out else Path("results") / settings.name)
    steps = build_steps(settings)
    selected, forced = _select(steps, args.from_step, args.only)
    if args.list:
        print_list(plan(steps, settings, layout, selected, forced, args.overwrite), layout, console)
        return 0
    with locked(layout.root, " ".join(["mscseg-run", *argv]), out=console):
        entries = plan(steps, settings, layout, selected, forced, args.overwrite)
        return _run(entries, steps, settings, layout, argv, console)


def _run(entries: list[Planned], steps: list[Step], settings: Settings, layout: Layout, argv: list[str],
         console: TextIO) -> int:
    """Run the planned steps (holding the results folder's lock); the exit status."""
    if any(e.action is Action.CONFLICT for e in entries):
        raise RunError(conflicts_message(entries, layout))
    check_inputs(settings)
    check_weights(settings, {e.step.name for e in entries if e.action is Action.RUN})
    layout.root.mkdir(parents=True, exist_ok=True)
    write_config_json(settings, layout, argv, [step.name for step in steps])
    print(f"mscseg: config {settings.source} -> {layout.root}", file=console)
    for warning in settings.untrained:
        print(f"mscseg: note: {warning}", file=console)
    expected = stamp_hashes(steps, settings)
    started = time.perf_counter()
    ran = 0
    for position, entry in enumerate(entries, 1):
        label = f"[{position:>2}/{len(entries)}] {entry.step.name:<{_name_width(entries)}}"
        if entry.action is not Action.RUN:
            print(f"{label} skipped ({entry.note or entry.state.value})", file=console, flush=True)
            continue
        log_path = layout.log(entry.step.name)
        print(f"{label} running{' (resuming)' if entry.resume else ''} ... (log: {log_path})", file=console, flush=True)
        try:
            wall = run_step(entry, settings, layout, expected[entry.step.name])
        except KeyboardInterrupt:
            print(f"{label} interrupted; run the same command again to resume (log: {log_path})", file=console, flush=True)
            return 130
        except StepError as error:
            print(f"{label} {error.kind}: {error.message}", file=console, flush=True)
            print(f"error: {_step_error_line(entry.step.name, error, log_path)}", file=sys.stderr)
            return error.exit_code
        ran += 1
        print(f"{label} done in {_duration(wall)}", file=console, flush=True)
    print(f"mscseg: {ran} step(s) ran in {_duration(time.perf_counter() - started)}", file=console)
    if layout.report.is_file():
        print(f"mscseg: report: {layout.report}", file=console)
    return 0


def _step_error_line(name: str, error: StepError, log_path: Path) -> str:
    if error.kind == "failed":
        return f"step {name} failed: {error.message} (log: {log_path})"
    if error.kind == "crashed":
        exception = error.message.split(":", 1)[0]
        return f"step {name} crashed ({exception}); the traceback is in {log_path}"
    return f"step {name} crashed: {error.message}; its log: {log_path}"


def _name_width(entries: list[Planned]) -> int:
    return max(len(e.step.name) for e in entries)


if __name__ == "__main__":
    sys.exit(main())
