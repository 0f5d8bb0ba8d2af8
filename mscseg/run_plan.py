"""Stamps and planning for ``mscseg.run``: where each step stands against its stamp (``State``), what
``mscseg-run`` does with it (``Action``), and the plan of a whole run with its conflicts."""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.lock import has_content

from .config import Settings
from .errors import RunError
from .layout import Layout, run_json
from .steps import Step, settings_hash, stamp_hashes


class State(enum.Enum):
    """Where a step stands against its stamp."""

    NEW = "new"              # never ran, no outputs
    DONE = "done"            # stamp matches settings and inputs, outputs there
    PARTIAL = "partial"      # stopped part-way with the same settings
    CHANGED = "changed"      # a setting it reads changed
    STALE = "stale"          # an input changed or is remade, or its outputs are missing
    FOREIGN = "foreign"      # outputs there, but no stamp says which settings made them


class Action(enum.Enum):
    RUN = "run"
    SKIP = "skip"
    CONFLICT = "conflict"    # would replace finished outputs; needs --overwrite


def read_stamp(layout: Layout, step: str) -> dict | None:
    path = layout.stamp(step)
    if not path.is_file():
        return None
    try:
        stamp = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return stamp if isinstance(stamp, dict) else None


def write_stamp(layout: Layout, step: str, stamp: dict) -> None:
    from data.outputs import write_json

    write_json(layout.stamp(step), stamp)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        flat: dict[str, Any] = {}
        for key, value in obj.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat or {prefix: {}}
    return {prefix: obj}


def describe_changes(old: dict, new: dict, limit: int = 4) -> str:
    """``semantic.epochs 1 -> 2, semantic.seed 0 -> 1`` for the settings that differ."""
    old_flat = _flatten(json.loads(json.dumps(old, default=str)))
    new_flat = _flatten(json.loads(json.dumps(new, default=str)))
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
    state: State
    action: Action
    note: str = ""
    resume: bool = False
    overwrite: bool = False
    has_outputs: bool = False

    @property
    def replaces_finished(self) -> bool:
        """True when running it deletes outputs a finished run of it left (what --overwrite allows)."""
        return (self.action is Action.RUN and self.has_outputs and not self.step.derived
                and self.state in (State.CHANGED, State.STALE, State.FOREIGN, State.DONE) and self.overwrite)


def _has_outputs(paths: list[Path]) -> bool:
    return any(_is_output(p) for p in paths)


def _is_output(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and has_content(path))


def plan(
    steps: list[Step], settings: Settings, layout: Layout,
    selected: set[str] | None = None, forced: set[str] | None = None, overwrite: bool = False,
) -> list[Planned]:
    """Decide, for every step, whether it runs, is skipped, or conflicts with finished outputs."""
    selected = {s.name for s in steps} if selected is None else selected
    forced = forced or set()
    expected = stamp_hashes(steps, settings)
    by_name: dict[str, Planned] = {}
    for step in steps:
        entry = _state(step, settings, expected[step.name], read_stamp(layout, step.name), by_name, layout)
        entry.has_outputs = _has_outputs(step.outputs(layout))
        by_name[step.name] = _decide(entry, step.name in selected, step.name in forced, overwrite)
    entries = list(by_name.values())
    _check_dependencies(entries, by_name)
    return entries


def _state(step: Step, settings: Settings, expected: str, stamp: dict | None, by_name: dict[str, Planned],
           layout: Layout) -> Planned:
    outputs = step.outputs(layout)
    if stamp is None:
        if _has_outputs(outputs) and not step.derived:
            shown = next(p for p in outputs if _is_output(p))
            return Planned(step, State.FOREIGN, Action.RUN, f"{shown} exists but no stamp says which settings made it")
        return Planned(step, State.NEW, Action.RUN)
    current = step.settings(settings)
    same_settings = stamp.get("settings_hash") == settings_hash(step, settings)
    if stamp.get("status") != "done":
        if same_settings and stamp.get("stamp") == expected:
            how = {"failed": "failed last time", "interrupted": "interrupted"}.get(stamp.get("status"), "stopped part-way")
            resume = step.resumable and any(run_json(p).is_file() for p in outputs if p.is_dir())
            return Planned(step, State.PARTIAL, Action.RUN, f"{how}; " + ("resumes" if resume else "runs again"), resume=resume)
        if not same_settings:
            return Planned(step, State.CHANGED, Action.RUN,
                           "stopped part-way with other settings: " + describe_changes(stamp.get("settings", {}), current))
        return Planned(step, State.STALE, Action.RUN, "stopped part-way, and its inputs changed since")
    if not same_settings:
        return Planned(step, State.CHANGED, Action.RUN, "settings changed: " + describe_changes(stamp.get("settings", {}), current))
    recorded = stamp.get("inputs", {})
    for name in step.inputs:
        entry = by_name[name]
        if entry.action in (Action.RUN, Action.CONFLICT):
            return Planned(step, State.STALE, Action.RUN, f"{name} reruns")
        if recorded.get(name) != (read_stamp(layout, name) or {}).get("id"):
            return Planned(step, State.STALE, Action.RUN, f"{name} was remade since")
    if stamp.get("stamp") != expected:
        return Planned(step, State.STALE, Action.RUN, "the settings of a step before it changed")
    if not _has_outputs(outputs):
        return Planned(step, State.STALE, Action.RUN, "outputs missing")
    return Planned(step, State.DONE, Action.SKIP, "up to date")


def _decide(entry: Planned, selected: bool, forced: bool, overwrite: bool) -> Planned:
    if not selected:
        entry.action = Action.SKIP
        entry.note = (entry.note + "; " if entry.note and entry.state is not State.DONE else "") + "not selected"
        return entry
    if entry.state is State.DONE:
        if forced and overwrite:
            entry.action, entry.overwrite, entry.note = Action.RUN, True, "rerun (--overwrite)"
        elif forced:
            entry.note = "up to date (add --overwrite to run it again)"
        return entry
    if entry.state in (State.NEW, State.PARTIAL):
        entry.action = Action.RUN
        entry.overwrite = entry.state is State.PARTIAL and not entry.resume
        return entry
    if entry.step.derived or overwrite or not entry.has_outputs:
        entry.action, entry.overwrite = Action.RUN, True
        return entry
    entry.action = Action.CONFLICT
    return entry


def _check_dependencies(entries: list[Planned], by_name: dict[str, Planned]) -> None:
    for entry in entries:
        if entry.action is not Action.RUN or entry.step.derived:
            continue
        for name in entry.step.inputs:
            before = by_name[name]
            if before.action in (Action.RUN, Action.CONFLICT):
                continue
            if before.state is not State.DONE:
                raise RunError(
                    f"step {entry.step.name} needs {name}, which has not finished ({before.state.value}); "
                    f"run without --only/--from, or add --only {name}"
                )


def conflicts_message(entries: list[Planned], layout: Layout) -> str:
    lines = [f"{e.step.name} ({e.note})" for e in entries if e.action is Action.CONFLICT]
    return (
        f"{layout.root}: finished outputs would be replaced by {len(lines)} step(s): " + "; ".join(lines)
        + ". Nothing was run. Pass --overwrite to rerun them (their old outputs are deleted), "
        "or --out NEW_FOLDER to keep these results and start a new run"
    )
