"""Typed target knobs: what `ExportOptions.extra` may hold for each target, checked before any work.

Each target declares its knobs as a frozen dataclass (name, type, default, one-line help in the field
metadata). `parse` turns a user's dict into that dataclass or fails with a SmolshipError naming the
bad key or value and listing the valid ones, so a typo such as {"group_sise": 64} can no longer be
silently ignored by a many-minute export.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from smolship.errors import SmolshipError


def knob(default, help: str):
    """A knob field: its default and the one line `describe` prints."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _coerce(value, hint, name: str, target: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None and (hint is type(None) or type(None) in args):
        return None
    kinds = [a for a in args if a is not type(None)] if origin in (typing.Union, types.UnionType) else [hint]
    for kind in kinds:
        base = typing.get_origin(kind) or kind
        if base is bool:
            if isinstance(value, bool):
                return value
            continue
        if base in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if base is int and value != int(value):
                continue
            return base(value)
        if base is str and isinstance(value, str):
            return value
        if base in (list, tuple) and isinstance(value, (list, tuple)):
            return base(value)
        if base is dict and isinstance(value, dict):
            return dict(value)
    kind = hint.__name__ if isinstance(hint, type) else str(hint)  # int, or "int | None"
    raise SmolshipError(f"{target} option {name}={value!r} has the wrong type (expected {kind}).",
                        f"Give {name} as {kind}.")


@dataclasses.dataclass(frozen=True)
class NoKnobs:
    """A target that takes no ExportOptions.extra (the default in targets.base.Target)."""


def parse(cls, extra: dict | None, target: str):
    """The dataclass `cls` filled from `extra`; unknown keys and ill-typed values fail here."""
    extra = dict(extra or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(extra) - set(fields))
    if unknown and not fields:
        raise SmolshipError(f"The {target} target takes no extra options (got {', '.join(unknown)}).",
                            "Leave ExportOptions.extra empty for this target.")
    if unknown:
        raise SmolshipError(f"Unknown {target} option(s): {', '.join(unknown)}.",
                            f"Valid {target} options: {', '.join(sorted(fields))}.")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], k, target) for k, v in extra.items()})


def describe(cls) -> list[tuple[str, str, str]]:
    """(name, default, help) for every knob: for docs and `--help`-style listings."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append((f.name, repr(default), f.metadata.get("help", "")))
    return out
