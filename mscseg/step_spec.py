"""How a step is declared and stamped: ``Step`` (inputs, outputs, the settings it reads, its action, its
framework), the ``Context`` an action gets, the ``SettingsView`` that lets an action read only the settings its
step declares (``UndeclaredSetting`` otherwise), settings by dotted name, and the stamps (a hash of a step's
declared settings and of its inputs' stamps). ``mscseg.steps`` declares this project's steps with these and
re-exports every name here.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from data.settings import unstamped_default

from .config import Settings
from .errors import RunError
from .layout import Layout


class Framework(str, enum.Enum):
    """What a step imports: NONE runs in the runner's process, the others each in a subprocess of its own."""

    NONE = "none"
    TENSORFLOW = "tensorflow"
    TORCH = "torch"


class UndeclaredSetting(AttributeError):
    """An action read a setting its step does not declare (a bug in the step's declaration)."""


# ---------------------------------------------------------------- settings by dotted name

_MISSING = object()


def setting_value(settings: Any, name: str, default: Any = None) -> Any:
    """The value of the dotted setting ``name`` (attributes of dataclasses, keys of mappings)."""
    value = settings
    for part in name.split("."):
        if isinstance(value, SettingsView):
            value = value._value
        if isinstance(value, dict):
            value = value.get(part, value.get(_int_key(part), _MISSING))
        else:
            value = getattr(value, part, _MISSING)
        if value is _MISSING:
            return default
    return value


def _int_key(part: str) -> Any:
    return int(part) if part.isdigit() else part


def plain(value: Any) -> Any:
    """A JSON-able copy of a setting's value (dataclasses as dicts, less the fields added later and still at their default)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value) if not unstamped_default(value, f.name)}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


class SettingsView:
    """Read-only access to the declared settings only: ``view.semantic.epochs`` or ``view.semantic.model_options.get("unet")``.

    A name is readable when it is declared, or lies inside a declared name; reading anything
    else raises ``UndeclaredSetting`` naming the step and the setting.
    """

    def __init__(self, value: Any, declared: Sequence[str], step: str, prefix: str = ""):
        self._value = value
        self._declared = tuple(declared)
        self._step = step
        self._prefix = prefix

    def _child(self, key: str) -> Any:
        name = f"{self._prefix}{key}"
        if isinstance(self._value, dict):
            value = self._value.get(key, self._value.get(_int_key(str(key)), _MISSING))
        else:
            value = getattr(self._value, key, _MISSING)
        if any(name == d or name.startswith(d + ".") for d in self._declared):
            return None if value is _MISSING else value
        if value is not _MISSING and any(d.startswith(name + ".") for d in self._declared):
            return SettingsView(value, self._declared, self._step, name + ".")
        raise UndeclaredSetting(f"step {self._step} reads setting '{name}', which it does not declare in its 'reads'")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self._child(key)

    def __getitem__(self, key: str) -> Any:
        return self._child(str(key))

    def get(self, key: str, default: Any = None) -> Any:
        value = self._child(str(key))
        return default if value is None else value

    def __repr__(self) -> str:
        return f"SettingsView({self._prefix or 'settings'}, reads={list(self._declared)})"


# ---------------------------------------------------------------- the step declaration

@dataclass
class Context:
    """What an action gets: the declared settings, the results layout, and how to treat existing outputs."""

    settings: SettingsView
    layout: Layout
    step: str
    resume: bool = False
    overwrite: bool = False
    _all_settings: Settings | None = field(default=None, repr=False)
    _datasets: dict = field(default_factory=dict, repr=False)

    def dataset(self, study: str):
        """The study's ``data.Dataset``: the synthetic data in the results folder, else the configured path.

        Which data that is, is in the stamp of the ``data`` step every study step follows.
        """
        if study not in self._datasets:
            from data import read_dataset

            spec = getattr(self._all_settings, study).dataset
            if spec.synthetic is not None:
                self._datasets[study] = read_dataset(self.layout.synthetic_data(study), format="folders")
            else:
                self._datasets[study] = read_dataset(spec.path, spec.format, **spec.options)
        return self._datasets[study]

    def split(self, study: str) -> dict:
        from data.split import read_split

        return read_split(self.layout.split_json(study), self.dataset(study).names)

    def samples(self, study: str, names: Sequence[str]) -> list:
        dataset = self.dataset(study)
        return [dataset.get(name) for name in names]


@dataclass(frozen=True)
class Step:
    """One unit of work, declared once.

    inputs: the steps whose outputs it reads; outputs: its files and folders in the layout;
    reads: the dotted settings its action reads (and nothing else); framework: what it imports
    (a TensorFlow or torch step runs in a subprocess of its own); resumable: a stopped run
    continues (training); derived: a view of everything before it (the report), remade
    whenever out of date and never a conflict; devices: the dotted setting holding its device
    count (``mscseg.devices``: the runner starts it on that many GPUs or processes).
    """

    name: str
    inputs: tuple[str, ...]
    outputs: Callable[[Layout], list[Path]]
    reads: tuple[str, ...]
    action: Callable[[Context], None]
    framework: Framework = Framework.NONE
    resumable: bool = False
    derived: bool = False
    devices: str | None = None

    def settings(self, settings: Settings) -> dict[str, Any]:
        """``{dotted name: value}`` of the settings this step reads (less those added later and still at their default)."""
        return {name: plain(setting_value(settings, name)) for name in self.reads
                if not unstamped_default(setting_value(settings, name.rpartition(".")[0]) if "." in name else settings,
                                         name.rpartition(".")[2])}

    def context(self, settings: Settings, layout: Layout, resume: bool = False, overwrite: bool = False) -> Context:
        return Context(SettingsView(settings, self.reads, self.name), layout, self.name, resume, overwrite, settings)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings_hash(step: Step, settings: Settings) -> str:
    return _hash(step.settings(settings))


def stamp_hashes(steps: Sequence[Step], settings: Settings) -> dict[str, str]:
    """Each step's stamp: a hash of its declared settings and its inputs' stamps (steps in run order)."""
    stamps: dict[str, str] = {}
    for step in steps:
        missing = [name for name in step.inputs if name not in stamps]
        if missing:
            raise RunError(f"step {step.name} reads {', '.join(missing)}, which do(es) not come before it")
        stamps[step.name] = _hash({"step": step.name, "settings": step.settings(settings),
                                   "inputs": {name: stamps[name] for name in step.inputs}})
    return stamps


def successors(steps: Sequence[Step], names: set[str]) -> set[str]:
    """``names`` and every step that reads from them, directly or through other steps."""
    found = set(names)
    for step in steps:
        if any(name in found for name in step.inputs):
            found.add(step.name)
    return found
