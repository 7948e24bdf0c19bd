"""Settings dataclasses read back from JSON (a model's row, a checkpoint): every key known, and
every value of its field's declared type, so that damaged data fails with one line before a
pipeline is built from it."""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any, TypeVar

from manet.errors import PluginError

T = TypeVar("T")


def settings_from_json(cls: type[T], data: Any, what: str) -> T:
    """``cls(**data)`` for the ``what`` settings (e.g. "pipeline") in the JSON value ``data``."""
    if not isinstance(data, dict):
        raise PluginError(f"{what} settings must be a JSON object, not {type(data).__name__} {data!r:.60}")
    declared = {f.name: f.type for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(declared))
    if unknown:
        raise PluginError(f"unknown {what} settings {', '.join(map(str, unknown))}; known: {', '.join(sorted(declared))}")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if not matches_type(value, hints[name]):
            raise PluginError(f"{what} setting {name} is {value!r:.60}, not {declared[name]}")
    return cls(**data)


def matches_type(value: Any, hint: Any) -> bool:
    """Whether the JSON value ``value`` fits the annotation ``hint`` (``int`` refuses booleans,
    ``float`` takes integers as JSON writes them)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, arg) for arg in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    base = origin or hint
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base)
