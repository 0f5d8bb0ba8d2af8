"""Run both studies end to end as ordered steps with stamps (``python -m mscseg.run``, ``mscseg-run``).

Steps (in order; a study that is disabled in the config has none):

    data                    synthetic data written (or the dataset read and checked), data/summary_<study>.csv
    split                   split.json (semantic) and instance/split.json
    semantic_train_<model>  semantic/<model>/ (one per model in the config)
    semantic_sweep          semantic/masks/ (validation masks), semantic/sweep/
    semantic_stats          semantic/stats/
    semantic_figures        figures/fig1..fig4
    instance_train          instance/maskrcnn/
    instance_predict        instance/predictions/gt.json, maskrcnn.json
    instance_sam            instance/predictions/sam_<mode>.json
    instance_eval           instance/eval/<method>/<interpolation>/
    instance_table          instance/instance_table.csv
    instance_stats          instance/stats/
    instance_figures        figures/instance
    report                  report.html

Each step writes ``.stamps/<step>.json`` (the settings it ran with and the stamps of the
steps it read) and ``logs/<step>.log`` (everything it printed). On a new run:

- a step whose stamp matches its settings and inputs is skipped (up to date);
- a step stopped part-way resumes (training continues from its last saved epoch);
- a step whose settings changed, or whose inputs were remade, would replace finished
  outputs: the run stops before doing anything and names those steps. Pass
  ``--overwrite`` to rerun them, or ``--out NEW_FOLDER`` to keep the old results.

``report.html`` is a view of the results, remade whenever it is out of date.
Exit status: 0 done, 2 bad input or settings, 1 a crash (traceback in the step's log),
130 interrupted (rerun the same command to resume).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

from data.cli import make_parser, one_line, run_cli
from data.errors import MscsegError

from .config import Settings, check_inputs, load_config
from .errors import RunError

# ---------------------------------------------------------------- results layout

@dataclass
class Layout:
    """Paths of one results folder (ARCHITECTURE.md, "Contracts between steps")."""

    root: Path

    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def split_json(self, study: str) -> Path:
        return self.root / "split.json" if study == "semantic" else self.root / "instance" / "split.json"

    @property
    def semantic(self) -> Path:
        return self.root / "semantic"

    def semantic_model(self, model: str) -> Path:
        return self.semantic / model

    @property
    def semantic_masks(self) -> Path:
        return self.semantic / "masks"

    @property
    def sweep(self) -> Path:
        return self.semantic / "sweep"

    @property
    def semantic_stats(self) -> Path:
        return self.semantic / "stats"

    @property
    def instance(self) -> Path:
        return self.root / "instance"

    @property
    def maskrcnn(self) -> Path:
        return self.instance / "maskrcnn"

    @property
    def predictions(self) -> Path:
        return self.instance / "predictions"

    def prediction(self, method: str) -> Path:
        return self.predictions / f"{method}.json"

    def evaluation(self, method: str, interpolation: int) -> Path:
        return self.instance / "eval" / method / f"{interpolation}point"

    @property
    def instance_table(self) -> Path:
        return self.instance / "instance_table.csv"

    @property
    def instance_stats(self) -> Path:
        return self.instance / "stats"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def stamps(self) -> Path:
        return self.root / ".stamps"

    @property
    def report(self) -> Path:
        return self.root / "report.html"


# ---------------------------------------------------------------- steps

@dataclass
class Context:
    """What a step's action gets: settings, paths, and how to treat existing outputs."""

    settings: Settings
    layout: Layout
    step: str
    resume: bool = False
    overwrite: bool = False
    _datasets: dict = field(default_factory=dict)

    def dataset(self, study: str):
        """The study's ``data.Dataset`` (synthetic data from the results folder, else the configured path)."""
        if study not in self._datasets:
            from data import read_dataset

            spec = getattr(self.settings, study).dataset
            if spec.synthetic is not None:
                self._datasets[study] = read_dataset(self.layout.data / study, format="folders")
            else:
                self._datasets[study] = read_dataset(spec.path, spec.format, **spec.options)
        return self._datasets[study]

    def split(self, study: str) -> dict:
        from data.split import read_split

        return read_split(self.layout.split_json(study), self.dataset(study).names)

    def samples(self, study: str, names: Sequence[str]) -> list:
        dataset = self.dataset(study)
        return [dataset.get(name) for name in names]


@dataclass
class Step:
    """One unit of work: its inputs (``deps``), outputs, the settings it depends on, and the action."""

    name: str
    study: str
    deps: tuple[str, ...]
    outputs: Callable[[Layout], list[Path]]
    settings: Callable[[Settings], dict]
    action: Callable[[Context], None]
    needs: tuple[str, ...] = ()
    resumable: bool = False
    derived: bool = False

    def availability(self) -> str:
        """"" when every function the step calls exists, else what is missing."""
        for need in self.needs:
            module_name, _, attribute = need.partition(":")
            try:
                spec = importlib.util.find_spec(module_name)
            except (ImportError, ValueError):
                spec = None
            if spec is None:
                return f"not available yet ({module_name.replace('.', '/')}.py missing)"
            try:
                module = importlib.import_module(module_name)
            except Exception as error:  # noqa: BLE001 - a broken piece is reported, not raised, at planning
                return f"not available ({module_name} fails to import: {type(error).__name__}: {error})"
            if attribute and not hasattr(module, attribute):
                return f"not available yet ({module_name}.{attribute} missing)"
        return ""


def _semantic_training_settings(settings: Settings, model: str) -> dict:
    s = settings.semantic
    return {
        "model": model,
        "image_size": s.image_size,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "encoder_weights": s.encoder_weights,
        "augment": s.augment,
        "mixed_precision": s.mixed_precision,
        "seed": s.seed,
        "model_options": s.model_options.get(model, {}),
    }


def _instance_methods(settings: Settings) -> list[str]:
    return ["maskrcnn"] + [f"sam_{mode}" for mode in settings.instance.sam.modes]


def build_steps(settings: Settings) -> list[Step]:
    """The ordered steps for these settings (disabled studies have none)."""
    from . import steps as actions

    semantic, instance = settings.semantic, settings.instance
    studies = [name for name in ("semantic", "instance") if getattr(settings, name).enabled]
    data_settings = lambda st: {name: _as_plain(getattr(st, name).dataset) for name in studies}  # noqa: E731
    result = [
        Step("data", "data", (), lambda lay: [lay.data], data_settings, actions.data_step, ("data:read_dataset",)),
        Step(
            "split", "data", ("data",),
            lambda lay: [lay.split_json(study) for study in studies],
            lambda st: {name: _as_plain(getattr(st, name).split) for name in studies},
            actions.split_step, ("data.split:load_or_make_split",),
        ),
    ]
    if semantic.enabled:
        train_names = []
        for model in semantic.models:
            name = f"semantic_train_{model}"
            train_names.append(name)
            result.append(Step(
                name, "semantic", ("split",),
                lambda lay, model=model: [lay.semantic_model(model)],
                lambda st, model=model: _semantic_training_settings(st, model),
                lambda ctx, model=model: actions.semantic_train_step(ctx, model),
                ("keras_semseg.train:train_model",), resumable=True,
            ))
        result += [
            Step("semantic_sweep", "semantic", tuple(train_names),
                 lambda lay: [lay.semantic_masks, lay.sweep],
                 lambda st: {"models": list(st.semantic.models)},
                 actions.semantic_sweep_step, ("keras_semseg.sweep:run_sweep",)),
            Step("semantic_stats", "semantic", ("semantic_sweep",),
                 lambda lay: [lay.semantic_stats],
                 lambda st: {"metrics": list(st.semantic.metrics), **_as_plain(st.stats)},
                 actions.semantic_stats_step, ("stats:analyse",)),
            Step("semantic_figures", "semantic", ("semantic_sweep", "semantic_stats"),
                 lambda lay: [lay.figures / f"fig{i}.{ext}" for i in (1, 2, 3, 4) for ext in ("png", "pdf")],
                 lambda st: {"figure_images": st.semantic.figure_images, "metrics": list(st.semantic.metrics),
                             "posthoc": st.stats.posthoc},
                 actions.semantic_figures_step,
                 ("keras_semseg.plots:figure1", "keras_semseg.plots:figure2", "keras_semseg.plots:figure4",
                  "stats.plots:figure3")),
        ]
    if instance.enabled:
        result += [
            Step("instance_train", "instance", ("split",), lambda lay: [lay.maskrcnn],
                 lambda st: {k: getattr(st.instance, k) for k in (
                     "image_size", "epochs", "batch_size", "lr", "weight_decay", "weights", "detections_per_image", "seed")},
                 actions.instance_train_step, ("torch_instseg.maskrcnn:train_maskrcnn",), resumable=True),
            Step("instance_predict", "instance", ("instance_train",),
                 lambda lay: [lay.prediction("gt"), lay.prediction("maskrcnn")],
                 lambda st: {"image_size": st.instance.image_size, "detections_per_image": st.instance.detections_per_image},
                 actions.instance_predict_step,
                 ("torch_instseg.maskrcnn:predict_to_coco", "torch_instseg.coco:dataset_to_coco")),
            Step("instance_sam", "instance", ("instance_predict",),
                 lambda lay: [lay.prediction(f"sam_{mode}") for mode in instance.sam.modes],
                 lambda st: _as_plain(st.instance.sam),
                 actions.instance_sam_step, ("torch_instseg.sam:run_sam",)),
            Step("instance_eval", "instance", ("instance_predict", "instance_sam"),
                 lambda lay: [lay.instance / "eval"],
                 lambda st: {"methods": _instance_methods(st), **_as_plain(st.instance.evaluation)},
                 actions.instance_eval_step, ("torch_instseg.evaluate:run_evaluation",)),
            Step("instance_table", "instance", ("instance_predict", "instance_sam"),
                 lambda lay: [lay.instance_table],
                 lambda st: {"methods": _instance_methods(st), **_as_plain(st.instance.evaluation)},
                 actions.instance_table_step, ("torch_instseg.evaluate:instance_table",)),
            Step("instance_stats", "instance", ("instance_eval",),
                 lambda lay: [lay.instance_stats],
                 lambda st: {"methods": _instance_methods(st), **_as_plain(st.stats),
                             "interpolations": list(st.instance.evaluation.interpolations)},
                 actions.instance_stats_step, ("stats:analyse",)),
            Step("instance_figures", "instance", ("instance_predict", "instance_sam"),
                 lambda lay: [lay.figures / f"instance.{ext}" for ext in ("png", "pdf")],
                 lambda st: {"figure_images": st.instance.figure_images, "methods": _instance_methods(st)},
                 actions.instance_figures_step, ("torch_instseg.plots:instance_figure",)),
        ]
    all_names = tuple(step.name for step in result)
    result.append(Step("report", "report", all_names, lambda lay: [lay.report],
                       lambda st: {k: v for k, v in st.to_dict().items() if k != "source"},
                       actions.report_step, ("mscseg.report:write_report",), derived=True))
    return result


def _as_plain(obj: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    return asdict(obj) if is_dataclass(obj) else obj


# ---------------------------------------------------------------- stamps and planning

def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stamp_path(layout: Layout, step: str) -> Path:
    return layout.stamps / f"{step}.json"


def read_stamp(layout: Layout, step: str) -> dict | None:
    path = stamp_path(layout, step)
    if not path.is_file():
        return None
    try:
        stamp = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return stamp if isinstance(stamp, dict) else None


def write_stamp(layout: Layout, step: str, stamp: dict) -> None:
    from data.outputs import write_json

    write_json(stamp_path(layout, step), stamp)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        flat: dict[str, Any] = {}
        for key, value in obj.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat or {prefix: {}}
    return {prefix: obj}


def describe_changes(old: dict, new: dict, limit: int = 4) -> str:
    """``epochs 1 -> 2, seed 0 -> 1`` for the settings that differ."""
    old_flat, new_flat = _flatten(json.loads(json.dumps(old, default=str))), _flatten(json.loads(json.dumps(new, default=str)))
    changes = [
        f"{key} {old_flat.get(key, '(unset)')!r} -> {new_flat.get(key, '(unset)')!r}"
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key, "(unset)") != new_flat.get(key, "(unset)")
    ]
    more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
    return ", ".join(changes[:limit]) + more


@dataclass
class Planned:
    """What the runner will do with one step, and why."""

    step: Step
    state: str           # new, done, partial, changed, stale, foreign, unavailable, blocked
    action: str          # run, skip, conflict
    note: str = ""
    resume: bool = False
    overwrite: bool = False
    has_outputs: bool = False


def _has_outputs(paths: list[Path]) -> bool:
    return any(p.is_file() or (p.is_dir() and any(p.iterdir())) for p in paths)


def plan(
    steps: list[Step], settings: Settings, layout: Layout,
    selected: set[str] | None = None, forced: set[str] | None = None, overwrite: bool = False,
) -> list[Planned]:
    """Decide, for every step, whether it runs, is skipped, or conflicts with finished outputs."""
    selected = {s.name for s in steps} if selected is None else selected
    forced = forced or set()
    by_name: dict[str, Planned] = {}
    result = []
    for step in steps:
        current = step.settings(settings)
        stamp = read_stamp(layout, step.name)
        outputs = step.outputs(layout)
        missing_availability = step.availability()
        if missing_availability:
            entry = Planned(step, "unavailable", "skip", missing_availability)
        else:
            blocked = [d for d in step.deps if d in by_name and by_name[d].state in ("unavailable", "blocked")
                       and not (step.derived)]
            if blocked:
                entry = Planned(step, "blocked", "skip", f"needs {', '.join(blocked)}")
            else:
                entry = _state(step, current, stamp, outputs, by_name, layout)
        if entry.state not in ("unavailable", "blocked"):
            entry.has_outputs = _has_outputs(outputs)
            entry = _decide(entry, step.name in selected, step.name in forced, overwrite)
        by_name[step.name] = entry
        result.append(entry)
    _check_dependencies(result, by_name)
    return result


def _state(step: Step, current: dict, stamp: dict | None, outputs: list[Path], by_name: dict[str, Planned], layout: Layout) -> Planned:
    if stamp is None:
        if _has_outputs(outputs) and not step.derived:
            shown = next(p for p in outputs if p.is_file() or (p.is_dir() and any(p.iterdir())))
            return Planned(step, "foreign", "run", f"{shown} exists but no stamp says which settings made it")
        return Planned(step, "new", "run")
    same_settings = stamp.get("settings_hash") == _hash(current)
    if stamp.get("status") != "done":
        if same_settings:
            how = {"failed": "failed last time", "interrupted": "interrupted"}.get(stamp.get("status"), "stopped part-way")
            resume = step.resumable and any((p / "run.json").is_file() for p in outputs if p.is_dir())
            return Planned(step, "partial", "run", f"{how}; " + ("resumes" if resume else "runs again"), resume=resume)
        return Planned(step, "changed", "run", "stopped part-way with other settings: " + describe_changes(stamp.get("settings", {}), current))
    if not same_settings:
        return Planned(step, "changed", "run", "settings changed: " + describe_changes(stamp.get("settings", {}), current))
    recorded = stamp.get("deps", {})
    for dep in step.deps:
        dep_entry = by_name.get(dep)
        if dep_entry is None or dep_entry.state in ("unavailable", "blocked"):
            if step.derived and dep in recorded:
                return Planned(step, "stale", "run", f"{dep} no longer available")
            continue
        if dep_entry.action == "run":
            return Planned(step, "stale", "run", f"{dep} reruns")
        dep_stamp = read_stamp(layout, dep)
        if dep_stamp is None or recorded.get(dep) != dep_stamp.get("id"):
            return Planned(step, "stale", "run", f"{dep} was remade since")
    if step.derived and set(recorded) != {d for d in step.deps if by_name.get(d) and by_name[d].state not in ("unavailable", "blocked")}:
        return Planned(step, "stale", "run", "steps became available")
    if not _has_outputs(outputs):
        return Planned(step, "stale", "run", "outputs missing")
    return Planned(step, "done", "skip", "up to date")


def _decide(entry: Planned, selected: bool, forced: bool, overwrite: bool) -> Planned:
    if not selected:
        entry.action, entry.note = "skip", (entry.note + "; " if entry.note and entry.state != "done" else "") + "not selected"
        return entry
    if entry.state == "done":
        if forced and overwrite:
            entry.action, entry.overwrite, entry.note = "run", True, "rerun (--overwrite)"
        elif forced:
            entry.note = "up to date (add --overwrite to run it again)"
        return entry
    if entry.state in ("new", "partial"):
        entry.action = "run"
        entry.overwrite = entry.state == "partial" and not entry.resume
        return entry
    if entry.step.derived or overwrite or not entry.has_outputs:
        entry.action, entry.overwrite = "run", True
        return entry
    entry.action = "conflict"
    return entry


def _check_dependencies(entries: list[Planned], by_name: dict[str, Planned]) -> None:
    for entry in entries:
        if entry.action != "run" or entry.step.derived:
            continue
        for dep in entry.step.deps:
            dep_entry = by_name.get(dep)
            if dep_entry is None or dep_entry.action in ("run", "conflict"):
                continue
            if dep_entry.state != "done":
                raise RunError(
                    f"step {entry.step.name} needs {dep}, which has not finished ({dep_entry.state}); "
                    f"run without --only/--from, or add --only {dep}"
                )


def conflicts_message(entries: list[Planned], layout: Layout) -> str:
    lines = [f"{e.step.name} ({e.note})" for e in entries if e.action == "conflict"]
    return (
        f"{layout.root}: finished outputs would be replaced by {len(lines)} step(s): " + "; ".join(lines)
        + ". Nothing was run. Pass --overwrite to rerun them (their old outputs are deleted), "
        "or --out NEW_FOLDER to keep these results and start a new run"
    )


# ---------------------------------------------------------------- running one step

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


def run_step(entry: Planned, settings: Settings, layout: Layout) -> float:
    """Run one planned step with its output in its log; writes its stamp when it finishes."""
    step = entry.step
    if entry.overwrite or (entry.state in ("changed", "stale", "foreign") and not step.derived):
        _remove(step.outputs(layout))
    current = step.settings(settings)
    stamp = {
        "step": step.name,
        "status": "running",
        "id": uuid.uuid4().hex,
        "settings": current,
        "settings_hash": _hash(current),
        "deps": {dep: (read_stamp(layout, dep) or {}).get("id") for dep in step.deps if read_stamp(layout, dep)},
        "started": _now(),
        "resumed": entry.resume,
        "log": f"logs/{step.name}.log",
    }
    write_stamp(layout, step.name, stamp)
    log_path = layout.logs / f"{step.name}.log"
    context = Context(settings, layout, step.name, resume=entry.resume, overwrite=entry.overwrite or not step.resumable)
    started, cpu_started = time.perf_counter(), time.process_time()
    with capture_output(log_path) as log:
        print(f"=== {step.name} started {stamp['started']}" + (" (resuming)" if entry.resume else "") + " ===", file=log)
        try:
            step.action(context)
        except BaseException as error:
            traceback.print_exc(file=log)
            print(f"=== {step.name} stopped after {time.perf_counter() - started:.1f} s ===", file=log)
            stamp.update(status="interrupted" if isinstance(error, KeyboardInterrupt) else "failed",
                         error=f"{type(error).__name__}: {one_line(error, 300)}", stopped=_now())
            write_stamp(layout, step.name, stamp)
            raise
        wall = time.perf_counter() - started
        print(f"=== {step.name} finished in {wall:.1f} s ===", file=log)
    stamp.update(status="done", finished=_now(), wall_s=round(wall, 3), cpu_s=round(time.process_time() - cpu_started, 3))
    write_stamp(layout, step.name, stamp)
    return wall


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


# ---------------------------------------------------------------- versions and config.json

VERSION_PACKAGES = (
    "mscseg", "numpy", "scipy", "pandas", "scikit-image", "scikit-posthocs", "statsmodels", "matplotlib",
    "tensorflow", "tensorflow-cpu", "keras", "tf-keras", "segmentation-models", "torch", "torchvision",
    "segment-anything", "pycocotools", "tifffile", "pillow",
)


def library_versions() -> dict[str, str]:
    """Installed versions (from package metadata; no framework is imported)."""
    from importlib import metadata
    import platform

    versions = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def write_config_json(settings: Settings, layout: Layout, argv: Sequence[str], steps: Sequence[str] = ()) -> None:
    from data.outputs import write_json

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


def print_list(entries: list[Planned], layout: Layout, out: TextIO) -> None:
    width = max(len(e.step.name) for e in entries)
    print(f"steps of {layout.root}:", file=out)
    for entry in entries:
        stamp = read_stamp(layout, entry.step.name) or {}
        when = f"  ({_duration(stamp['wall_s'])}, {stamp.get('finished', '')})" if stamp.get("status") == "done" else ""
        will = {"run": "will run", "skip": "skip", "conflict": "needs --overwrite"}[entry.action]
        note = f" - {entry.note}" if entry.note else ""
        print(f"  {entry.step.name:<{width}}  {entry.state:<11} {will}{note}{when}", file=out)


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
    entries = plan(steps, settings, layout, selected, forced, args.overwrite)
    if args.list:
        print_list(entries, layout, console)
        return 0
    if any(e.action == "conflict" for e in entries):
        raise RunError(conflicts_message(entries, layout))
    check_inputs(settings)
    check_weights(settings, {e.step.name for e in entries if e.action == "run"})
    layout.root.mkdir(parents=True, exist_ok=True)
    write_config_json(settings, layout, argv, [step.name for step in steps])
    print(f"mscseg: config {settings.source} -> {layout.root}", file=console)
    for warning in settings.untrained:
        print(f"mscseg: note: {warning}", file=console)
    started = time.perf_counter()
    total = len(entries)
    ran, unavailable = 0, []
    for position, entry in enumerate(entries, 1):
        label = f"[{position:>2}/{total}] {entry.step.name:<{_name_width(entries)}}"
        if entry.action != "run":
            print(f"{label} {_skip_text(entry)}", file=console, flush=True)
            if entry.state == "unavailable":
                unavailable.append(entry.step.name)
            continue
        log_name = layout.logs / f"{entry.step.name}.log"
        print(f"{label} running{' (resuming)' if entry.resume else ''} ... (log: {log_name})", file=console, flush=True)
        try:
            wall = run_step(entry, settings, layout)
        except KeyboardInterrupt:
            print(f"{label} interrupted; run the same command again to resume (log: {log_name})", file=console, flush=True)
            return 130
        except MscsegError as error:
            print(f"{label} failed: {one_line(error)}", file=console, flush=True)
            raise RunError(f"step {entry.step.name} failed: {one_line(error)} (log: {log_name})") from None
        except Exception as error:  # noqa: BLE001 - a crash in a step is reported with its log
            print(f"{label} crashed: {type(error).__name__}: {one_line(error, 160)}", file=console, flush=True)
            print(f"error: step {entry.step.name} crashed ({type(error).__name__}); the traceback is in {log_name}", file=sys.stderr)
            return 1
        ran += 1
        print(f"{label} done in {_duration(wall)}", file=console, flush=True)
    summary = f"mscseg: {ran} step(s) ran in {_duration(time.perf_counter() - started)}"
    if unavailable:
        summary += f"; {len(unavailable)} not available yet: {', '.join(unavailable)}"
    print(summary, file=console)
    if layout.report.is_file():
        print(f"mscseg: report: {layout.report}", file=console)
    return 0


def _name_width(entries: list[Planned]) -> int:
    return max(len(e.step.name) for e in entries)


def _skip_text(entry: Planned) -> str:
    if entry.state == "unavailable":
        return entry.note
    if entry.state == "blocked":
        return f"skipped ({entry.note})"
    return f"skipped ({entry.note or entry.state})"


if __name__ == "__main__":
    sys.exit(main())
