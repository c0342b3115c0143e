"""One report over the whole matrix: a cross-model table, a section per model, the CI gate applied to
every bundle, and every failed job with its error. Written as report.{json,md,html} in the spec's `out`.

Rows are validation/report.py's bundle rows plus the model, the node that made them and the job's
attempts, so latency figures can be read next to the machine that measured them.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from smolship.validation.gates import Thresholds, check, load_project_gate, thresholds_for
from smolship.validation.plots import row_cell, scatter_svg
from smolship.validation.report import bundle_row, machine_info

COLUMNS = ["model", "bundle", "size_mb", "kld_mean", "top1_agreement", "nll_delta", "greedy_match", "prefill_tok_s",
           "decode_tok_s", "ttft_ms", "peak_rss_mb", "host", "gate"]


def matrix_report(spec, mjobs, outcomes, jobs_info: dict, seconds: float, backend: str) -> dict:
    """jobs_info: key -> {attempts, host, seconds} as seen by the driver from the job's events."""
    project = {**load_project_gate(Path.cwd()), **spec.gate}  # the spec's [gate] over pyproject's
    rows, gate, failures, jobs = [], [], [], []
    for m, o in zip(mjobs, outcomes):
        info = jobs_info.get(m.key, {})
        jobs.append({"job": m.key, "model": m.model.name, "target": m.job.target, "recipes": m.job.recipes,
                     "cpus": m.cpus, "memory_mb": m.memory_mb, "attempts": info.get("attempts", 1),
                     "host": info.get("host"), "seconds": info.get("seconds"), "error": o.error, "tried": o.tried})
        if o.error:
            failures.append({"job": m.key, "model": m.model.name, "target": m.job.target, "error": o.error,
                             "fix": o.fix, "attempts": info.get("attempts", 1), "log": getattr(o, "log", None)})
        for b, manifest in zip(o.bundles, o.manifests or [None] * len(o.bundles)):
            row = bundle_row(Path(b), manifest)
            row.update(model=m.model.name, source=m.model.source, bundle=f"{m.model.name}/{row['bundle']}", path=b,
                       host=info.get("host"), attempts=info.get("attempts", 1))
            result = check(row, thresholds_for(row["precision"], project, Thresholds()))
            row["gate"] = "pass" if result.passed else "FAIL"
            rows.append(row)
            gate.append(vars(result))
    return {"kind": "smolship-matrix", "backend": backend, "seconds": round(seconds, 1),
            "models": [{"name": m.name, "source": m.source} for m in spec.models], "targets": spec.targets,
            "machine": machine_info(spec.eval.threads), "rows": rows, "gate": gate, "failures": failures, "jobs": jobs}


def _md_table(rows: list[dict], cols: list[str]) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + \
        ["| " + " | ".join(row_cell(r, c) for c in cols) + " |" for r in rows]


def markdown(report: dict) -> str:
    m = report["machine"]
    passed = sum(g["passed"] for g in report["gate"])
    lines = [f"# smolship matrix: {len(report['models'])} models x {len(report['targets'])} targets", "",
             f"Backend {report['backend']}, {report['seconds']} s wall; driver: {m['system']} {m['machine']}; "
             f"gate: {passed}/{len(report['gate'])} bundles pass; {len(report['failures'])} jobs failed.", "",
             "## All bundles", ""] + _md_table(report["rows"], COLUMNS)
    for g in report["gate"]:
        if not g["passed"]:
            lines.append(f"- FAIL {g['bundle']}: " + "; ".join(g["failures"]))
    if report["failures"]:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- **{f['job']}** (attempts {f['attempts']}): {f['error']}" for f in report["failures"]]
    for model in report["models"]:
        lines += ["", f"## {model['name']}", "", f"Source: `{model['source']}`", ""]
        lines += _md_table([r for r in report["rows"] if r["model"] == model["name"]], COLUMNS[1:])
        lines += [""] + [f"- job {j['job']}: {j['attempts']} attempt(s) on {j['host']}, {j['seconds']} s, asked "
                         f"{j['cpus']} CPUs / {j['memory_mb'] / 1000:.1f} GB" + (f"; failed: {j['error']}" if j["error"] else "")
                         for j in report["jobs"] if j["model"] == model["name"]]
    return "\n".join(lines) + "\n"


def _html_table(rows: list[dict], cols: list[str]) -> str:
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(row_cell(r, c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def report_html(report: dict) -> str:
    esc = html.escape
    parts = [f"<h1>smolship matrix: {len(report['models'])} models x {len(report['targets'])} targets</h1>",
             f"<p>Backend {esc(report['backend'])}, {report['seconds']} s wall.</p>", "<h2>All bundles</h2>",
             _html_table(report["rows"], COLUMNS)]
    if report["failures"]:
        parts.append("<h2>Failed jobs</h2><ul>" + "".join(f"<li><b>{esc(f['job'])}</b>: {esc(f['error'])}</li>"
                                                          for f in report["failures"]) + "</ul>")
    for model in report["models"]:
        parts += [f"<h2>{esc(model['name'])}</h2><p>Source: <code>{esc(model['source'])}</code></p>",
                  _html_table([r for r in report["rows"] if r["model"] == model["name"]], COLUMNS[1:])]
    rows = report["rows"]
    parts.append(f'<div class="plots"><div>{scatter_svg(rows, "size_mb", "kld_mean", "kld_mean vs size", logy=True)}</div>'
                 f'<div>{scatter_svg(rows, "size_mb", "decode_tok_s", "decode tok/s vs size")}</div></div>')
    return ('<!doctype html><html><head><meta charset="utf-8"><title>smolship matrix</title><style>'
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
            ".plots{display:flex;flex-wrap:wrap;gap:2em}</style></head><body>" + "\n".join(parts) + "</body></html>\n")


def write_matrix_reports(out: str, report: dict) -> None:
    """Next to the bundles: a folder, or the same fsspec URL."""
    from smolship.matrix import store

    files = {"report.json": json.dumps(report, indent=2, default=str), "report.md": markdown(report),
             "report.html": report_html(report)}
    for name, text in files.items():
        if store.is_url(out):
            store.write_text(store.join(out, name), text)
        else:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / name).write_text(text)
