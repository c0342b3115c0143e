"""CI gate: thresholds per precision class, overridable in [tool.smolship.gate] or on the command line.

A bundle passes when every threshold that applies to it holds. Metrics the runtime could not measure
on this machine (Core ML latency on Linux) are reported as not measured, never as passed silently.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from xml.etree import ElementTree as ET

from smolship.errors import SmolshipError
from smolship.validation.latency import UNRELIABLE, unreliable

DEFAULTS: dict[str, dict] = {
    "32-bit": {"max_kld": 1e-4, "min_top1": 0.995},
    "16-bit": {"max_kld": 1e-3, "min_top1": 0.99},
    "8-bit": {"max_kld": 0.01, "min_top1": 0.95},
    "4-bit": {"max_kld": 0.1, "min_top1": 0.85},
}


@dataclass(frozen=True)
class Thresholds:
    max_kld: float | None = None
    min_top1: float | None = None
    min_decode_tok_s: float | None = None
    max_late_kld: float | None = None  # kld_mean over the last quarter of a full context (--long-context)


@dataclass
class GateResult:
    bundle: str
    passed: bool
    failures: list[str]
    notes: list[str]


def load_project_gate(start: Path = Path.cwd()) -> dict:
    """[tool.smolship.gate] from the nearest pyproject.toml (global keys + per-precision tables)."""
    for folder in [start, *start.parents]:
        p = folder / "pyproject.toml"
        if p.is_file():
            return tomllib.loads(p.read_text()).get("tool", {}).get("smolship", {}).get("gate", {})
    return {}


def thresholds_for(precision: str, project: dict, cli: Thresholds) -> Thresholds:
    """Defaults for the precision, then the project's global keys, then its per-precision table, then the CLI."""
    base = Thresholds(**DEFAULTS.get(precision, {}))
    glob = {k: v for k, v in project.items() if not isinstance(v, dict)}
    per = project.get(precision, {})
    settings = {**glob, **per}  # a per-precision value overrides the same key set for every precision
    unknown = sorted(set(settings) - set(vars(base)))
    if unknown:
        raise SmolshipError(f"[tool.smolship.gate] in pyproject.toml sets unknown threshold(s): {', '.join(unknown)}.",
                            f"Use only {', '.join(sorted(vars(base)))} (globally or in a per-precision table).")
    t = replace(base, **settings)
    overrides = {k: v for k, v in vars(cli).items() if v is not None}
    return replace(t, **overrides)


def check_project_gate(project: dict) -> None:
    """Fail on a bad [tool.smolship.gate] before any bundle is measured."""
    for precision in DEFAULTS:
        thresholds_for(precision, project, Thresholds())


def check(row: dict, t: Thresholds) -> GateResult:
    failures, notes = [], []
    checks = [("kld_mean", t.max_kld, lambda v, lim: v <= lim, "≤"),
              ("top1_agreement", t.min_top1, lambda v, lim: v >= lim, "≥"),
              ("decode_tok_s", t.min_decode_tok_s, lambda v, lim: v >= lim, "≥"),
              ("late_kld_mean", t.max_late_kld, lambda v, lim: v <= lim, "≤")]
    for metric, limit, ok, sign in checks:
        if limit is None:
            continue
        value = row.get(metric)
        if value is None:
            notes.append(f"{metric} not measured ({row.get('runtime_note') or 'no value'}); threshold {sign} {limit} not checked")
        elif not ok(value, limit):
            mark = f" {UNRELIABLE}: {row.get('latency_note')}" if unreliable(row, metric) else ""
            failures.append(f"{metric} = {value:.6g}{mark} breaks the threshold {sign} {limit:g}")
        elif unreliable(row, metric):
            notes.append(f"{metric} = {value:.6g} {UNRELIABLE}: {row.get('latency_note')}")
    if not row.get("runtime_ran", True):
        notes.append(f"runtime did not run: {row.get('runtime_note')}")
    return GateResult(row["bundle"], not failures, failures, notes)


def write_junit(path: Path, results: list[GateResult], rows: list[dict]) -> None:
    suite = ET.Element("testsuite", name="smolship", tests=str(len(results)),
                       failures=str(sum(not r.passed for r in results)))
    for r, row in zip(results, rows):
        case = ET.SubElement(suite, "testcase", classname=f"smolship.{row.get('target')}", name=r.bundle)
        for f in r.failures:
            ET.SubElement(case, "failure", message=f).text = f
        props = ET.SubElement(case, "properties")
        for k in ("kld_mean", "top1_agreement", "decode_tok_s", "size_mb", "latency_reliable", "late_kld_mean"):
            if row.get(k) is not None:
                ET.SubElement(props, "property", name=k, value=str(row[k]))
        if r.notes:
            ET.SubElement(case, "system-out").text = "\n".join(r.notes)
    Path(path).write_text(ET.tostring(suite, encoding="unicode"))
