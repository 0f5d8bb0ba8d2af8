"""Settings dataclasses declared once: each field's default, help and choices; its checks; its command-line flag.

A package's settings dataclass (``keras_semseg.settings.TrainSettings``,
``torch_instseg.settings.MaskRCNNSettings``, ``FinetuneSettings``) is the one place a
setting is written. ``problems()`` on such a class returns ``(field, problem)`` pairs; the
package's ``checked()`` joins them into one error, the run config prefixes each with its
dotted key. ``add_arguments`` makes one ``--flag`` per field (default from the class) and
``from_arguments`` turns the parsed flags back into the settings object, so a field added
to the class reaches the command line with no other edit.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from typing import Any, Iterable, Sequence

Problem = tuple[str, str]
"""``(field name, what is wrong with its value)``."""

_NONE_WORDS = ("none", "null")


DETERMINISTIC_HELP = ("same numbers for the same seed: the frameworks' deterministic kernels and op order "
                      "(off: faster on a GPU, last digits may vary)")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
            choices: Sequence[Any] | None = None, kw_only: bool = False, stamped_at_default: bool = True) -> Any:
    """A dataclass field with its help text (and valid ``choices``) for the command line.

    stamped_at_default=False: a setting added after results were made; it enters a step's stamp
    only when it differs from its default, so adding it leaves those results up to date.
    """
    metadata = {"help": help, "choices": None if choices is None else tuple(choices), "stamped_at_default": stamped_at_default}
    if kw_only:
        return dataclasses.field(default=default, default_factory=factory, metadata=metadata, kw_only=True)
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def unstamped_default(obj: Any, name: str) -> bool:
    """True when field ``name`` of the dataclass instance ``obj`` is at its default and is not stamped there."""
    if not dataclasses.is_dataclass(obj):
        return False
    found = {f.name: f for f in dataclasses.fields(obj)}.get(name)
    if found is None or found.metadata.get("stamped_at_default", True):
        return False
    default = found.default if found.default is not dataclasses.MISSING else (
        found.default_factory() if found.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
    return getattr(obj, name) == default


def field_names(cls: type) -> tuple[str, ...]:
    """The names of the dataclass ``cls``'s fields, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def problem_text(problems: Iterable[Problem], prefix: str = "") -> str:
    """One line: ``prefix + key: problem`` for each problem, joined by '; '."""
    return "; ".join(f"{prefix}{key}: {text}" for key, text in problems)


def choice_problem(value: Any, choices: Sequence[Any], what: str = "") -> str | None:
    """The problem of ``value`` when it is not one of ``choices``, else None."""
    if value in choices:
        return None
    return f"must be one of {', '.join(map(str, choices))}{what}, got '{value}'"


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------- command line

def _optional(convert: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in _NONE_WORDS else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _json_mapping(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not a JSON mapping ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON mapping: {text!r}")
    return value


_json_mapping.__name__ = "JSON mapping"


def _argument_type(annotation: Any) -> tuple[Any, bool]:
    """(the converter of one command-line value, whether 'none' is allowed) for a field's annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        convert, _ = _argument_type(options[0]) if len(options) == 1 else (str, False)
        return convert, type(None) in typing.get_args(annotation)
    if annotation is dict or origin is dict:
        return _json_mapping, False
    if annotation in (int, float, str):
        return annotation, False
    return str, False


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: Iterable[str] = ()) -> None:
    """One ``--field-name`` per field of the dataclass ``cls`` (not in ``skip``), default and help from the field.

    A bool field is ``--name/--no-name``; ``X | None`` accepts 'none'; a mapping is JSON text;
    a field without a default is required.
    """
    hints = typing.get_type_hints(cls)
    skipped = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skipped:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        text = f.metadata.get("help", "")
        shown = "none" if default is None else (json.dumps(default) if isinstance(default, dict) else default)
        text = f"{text} (default: {shown})" if not required else text
        if hints[f.name] is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        convert, nullable = _argument_type(hints[f.name])
        parser.add_argument(flag, dest=f.name, type=_optional(convert) if nullable else convert, default=default,
                            required=required, choices=f.metadata.get("choices"), help=text)


def from_arguments(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """An instance of ``cls`` from the parsed flags that ``add_arguments`` made; ``values`` replace or add fields."""
    given = {name: getattr(args, name) for name in field_names(cls) if hasattr(args, name)}
    return cls(**{**given, **values})
