"""Rule tables: which scheme a weight gets, by name. One matching rule for every target (issue 16).

A table is a sequence of `Rule` ``(pattern, scheme)``; the first pattern that **fullmatches** the weight's
name wins (ExecuTorch's QuantRule convention), and a scheme of None keeps the weight float. Every target's
plan holds `Rule`s; each writes its patterns in its own weight naming (quant/mixed.py writes the shared 8-bit
rule for each) and keeps its own scheme types, which say how its packer lays the weight out. GGUF is the
exception on purpose: its ``tensor_types`` patterns go to llama.cpp's quantizer too, which searches
(``std::regex_search``), so the GGUF target searches as well.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple, TypeVar

S = TypeVar("S")
NO_MATCH = object()


class Rule(NamedTuple):
    """One row of a rule table: a regex on the weight's name, in the target's naming, and the target's
    scheme for it (None: keep the weight float). A tuple, so ``for pattern, scheme in rules`` reads any table."""

    pattern: str
    scheme: Any


def first_match(rules: Iterable[Rule | tuple[str, S]], name: str, default=NO_MATCH):
    """The scheme of the first rule whose pattern fullmatches `name`; `default` when none does
    (KeyError when no default is given, so a table that must cover every weight says so)."""
    for pattern, scheme in rules:
        if re.fullmatch(pattern, name):
            return scheme
    if default is NO_MATCH:
        raise KeyError(f"no rule matches {name!r}")
    return default


def bad_patterns(rules: Iterable[tuple[str, object]]) -> list[str]:
    """Patterns that are not valid regular expressions (checked before any work starts)."""
    bad = []
    for pattern, _ in rules:
        try:
            re.compile(pattern)
        except re.error as e:
            bad.append(f"'{pattern}' ({e})")
    return bad
