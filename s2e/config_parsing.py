"""Strict parsing of config values: a preset's name, or a config dataclass stored as a mapping.

Names typed in YAML or on the command line (a robot, a task, an appearance domain) and configs read
back from checkpoints or JSON fail in the same, explicit way: the error lists what is known, so a
typo never falls back to a default.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def lookup(item: str | T, table: Mapping[str, T], kind: str) -> T:
    """``table[item]`` for a name; an instance of the table's type passes through unchanged."""
    if not isinstance(item, str):
        return item
    if item not in table:
        raise ValueError(f"unknown {kind} {item!r}; known {kind}s: {sorted(table)}")
    return table[item]


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build a dataclass from a mapping (a checkpoint, a JSON file); unknown keys are an error."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}; expected a subset of {sorted(known)}")
    return cls(**dict(data))
