"""Shared CLI pieces: option aliases, error display, progress bars, JSON/table output."""

from __future__ import annotations

import json
import os
import sys

import typer
from rich.console import Console
from rich.table import Table

from smolship.errors import SmolshipError
from smolship.logs import progress_bar  # noqa: F401  (lives below the CLI: export workers draw it too)

console = Console(stderr=True)
out_console = Console(width=None if sys.stdout.isatty() else 180)  # pipes and CI logs get the full table

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads for the runtimes (default: all cores).")
EvalFileOpt = typer.Option(None, "--eval-file", help="Your own eval text (blank-line separated) or .jsonl.")
EvalTokensOpt = typer.Option(4096, "--eval-tokens", help="Eval tokens for parity (0 = the whole eval set, ~10k tokens).")
NoCacheOpt = typer.Option(False, "--no-cache", help="Compute the reference logits and calibration statistics afresh: "
                          "nothing is read from or left in smolship's results cache (a run still shares them "
                          "between its own bundles).")
VerifyOpt = typer.Option(True, "--verify/--no-verify",
                         help="Check every bundle file's sha256 against manifest.json before loading it (on by default).")


def fail(problem: str, fix: str) -> None:
    raise SmolshipError(problem, fix)


def print_error(err: SmolshipError) -> None:
    console.print(f"[bold red]Error:[/] {err.problem}\n[bold]Fix:[/] {err.fix}", highlight=False, soft_wrap=True)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.2e}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        left = c in ("bundle", "target", "recipe", "metric", "key", "value")
        t.add_column(c, justify="left" if left else "right", no_wrap=c == "bundle")  # names stay whole
    for r in rows:
        t.add_row(*[fmt(v) for v in r])
    return t


def debug_enabled() -> bool:
    return os.environ.get("SMOLSHIP_DEBUG", "") not in ("", "0")


def open_bundle(path, verify: bool = True) -> dict:
    """The bundle's manifest, after checking every file's sha256 (or a note on stderr that we did not)."""
    from smolship.bundle import read_manifest, verify_bundle

    if verify:
        return verify_bundle(path)
    console.print(f"[yellow]Not verified:[/] '{path}' is loaded without checking its files against manifest.json (--no-verify).")
    return read_manifest(path)
