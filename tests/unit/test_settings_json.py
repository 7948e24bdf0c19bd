"""Settings read back from JSON: known keys, declared types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from manet.errors import PluginError
from manet.settings_json import matches_type, settings_from_json


@dataclass(frozen=True)
class Example:
    name: str = "a"
    size: int = 1
    rate: float = 0.5
    flag: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] | None = None


def test_matches_type():
    assert matches_type(3, int) and not matches_type(True, int) and not matches_type(3.0, int)
    assert matches_type(3, float) and matches_type(0.5, float) and not matches_type(False, float)
    assert matches_type(None, dict[str, Any] | None) and matches_type({}, dict[str, Any] | None)
    assert not matches_type([], dict[str, Any] | None) and not matches_type("x", dict[str, Any])
    assert matches_type(True, bool) and not matches_type(1, bool) and matches_type([1], Any)


def test_settings_from_json():
    assert settings_from_json(Example, {"size": 2, "rate": 1}, "example") == Example(size=2, rate=1)
    for data, says in (([], "example settings must be a JSON object, not list"),
                       ({"colour": 1, "size": 2}, "unknown example settings colour; known: extra, flag, name"),
                       ({"size": "2"}, "example setting size is '2', not int"),
                       ({"flag": 1}, "example setting flag is 1, not bool"),
                       ({"extra": [1]}, r"example setting extra is \[1\], not dict\[str, Any\] \| None")):
        with pytest.raises(PluginError, match=says):
            settings_from_json(Example, data, "example")
