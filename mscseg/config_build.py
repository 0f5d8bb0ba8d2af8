"""A parsed config mapping -> the settings dataclasses: ``build`` fills a dataclass key by key, converting each
value to its field's type (whole numbers, numbers, true/false, text, lists, mappings, unions, nested
dataclasses, the peers' sections), and refuses unknown keys and wrong types with a one-line ``RunError``
naming the dotted key (and the closest valid key). ``mscseg.config`` re-exports every name here.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any

from .config_peers import peer_section
from .errors import RunError


def _label(where: str, key: str, problem: str) -> str:
    label = ".".join(part for part in (where, key) if part)
    return f"{label}: {problem}" if label else problem


def _error(where: str, key: str, problem: str) -> RunError:
    return RunError(_label(where, key, problem))


def _suggest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(annotation: Any) -> str:
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a text value", list: "a list", dict: "a mapping"}
    if annotation in names:
        return names[annotation]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        return "a list"
    if typing.get_origin(annotation) is dict:
        return "a mapping"
    if args:
        return " or ".join(_type_name(a) for a in args) + (" or none" if type(None) in typing.get_args(annotation) else "")
    return getattr(annotation, "__name__", str(annotation))


def _convert(value: Any, annotation: Any, where: str, key: str) -> Any:
    """``value`` as ``annotation`` (int, float, bool, str, list[str], dict, unions, dataclasses)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if type(None) in options:
                return None
            raise _error(where, key, f"must be {_type_name(annotation)}, got none")
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where, key)
            except RunError:
                continue
        raise _error(where, key, f"must be {_type_name(annotation)}, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, f"{where}.{key}" if where else key)
    if origin is list or annotation is list:
        if not isinstance(value, list):
            raise _error(where, key, f"must be a list, got {value!r}")
        (item_type,) = typing.get_args(annotation) or (Any,)
        return [value_ if item_type is Any else _convert(value_, item_type, where, key) for value_ in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _error(where, key, f"must be a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _error(where, key, f"must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _error(where, key, f"must be a whole number, got {value!r}")
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise _error(where, key, f"must be a number, got {value!r}")
        if not math.isfinite(number):
            raise _error(where, key, f"must be a finite number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _error(where, key, f"must be a text value, got {value!r}")
    return value


def build(cls: type, data: Any, where: str = "") -> Any:
    """An instance of dataclass ``cls`` from a mapping; unknown keys and wrong types are ``RunError``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _error(where, "", f"must be a mapping of key: value, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    known = list(fields)
    values = {}
    for key, value in data.items():
        if key not in known:
            raise _error(where, str(key), f"unknown key{_suggest(str(key), known)}; valid keys here: {', '.join(known)}")
        peer = fields[key].metadata.get("peer")
        values[key] = (build(peer_section(peer), value, f"{where}.{key}" if where else key) if peer
                       else _convert(value, hints[key], where, key))
    return cls(**values)
