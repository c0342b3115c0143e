"""Cross-bundle report: one row per bundle with parity, latency and whether the real runtime ran it.

Written as report.json (machines), report.md (humans, PRs) and report.html (plots) next to the bundles.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from smolship import __version__
from smolship.bundle import read_manifest
from smolship.validation.latency import unreliable
from smolship.validation.plots import report_html, row_cell

ROW_KEYS = ["target", "recipe", "precision", "size_mb", "kld_mean", "kld_p99", "top1_agreement", "max_abs_logit_diff",
            "nll_ref", "nll_delta", "greedy_match", "prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb",
            "threads", "runtime_ran", "runtime_note", "latency_reliable", "latency_note", "full_context_peak_rss_mb"]


def bundle_row(bundle: Path, manifest: dict | None = None, validation: dict | None = None) -> dict:
    manifest = manifest or read_manifest(bundle)
    v = validation if validation is not None else (manifest.get("validation") or {})
    row = {"bundle": Path(bundle).name, "path": str(bundle), "target": manifest["target"],
           "recipe": manifest["quant"]["recipe"], "precision": manifest["quant"]["precision"],
           "size_mb": manifest.get("size_mb")}
    for k in ROW_KEYS:
        row.setdefault(k, v.get(k))
    row.update(long_context_cells(v))
    if "weight_parity" in v:
        row["weight_parity"] = v["weight_parity"]
    if manifest.get("cache"):  # what the export took from the results cache
        row["cache"] = manifest["cache"]
    return row


# validation.long_context and the full-context memory, flattened for tables and the gate (issue 29)
LONG_KEYS = {"long_context_positions": "positions", "early_kld_mean": "kld_mean_early",
             "late_kld_mean": "kld_mean_late", "early_top1": "top1_early", "late_top1": "top1_late"}
LONG_COLUMNS = ["bundle", "long_context_positions", "early_kld_mean", "late_kld_mean", "early_top1", "late_top1",
                "full_context_peak_rss_mb"]


def long_context_cells(v: dict) -> dict:
    lc = v.get("long_context") or {}
    cells = {k: lc.get(src) for k, src in LONG_KEYS.items() if lc.get(src) is not None}
    if lc.get("note"):
        cells["long_context_note"] = lc["note"]
    for k in ("full_context_positions", "full_context_peak_rss_mb"):
        if v.get(k) is not None:
            cells[k] = v[k]
    return cells


def long_context_markdown(rows: list[dict]) -> list[str]:
    """The long-context table (report.md, and its rows in report.html): only when a bundle has one."""
    rows = [r for r in rows if any(r.get(c) is not None for c in LONG_COLUMNS[1:])]
    if not rows:
        return []
    return ["", "## Long context", "",
            "Parity over a context filled to max_seq_len with eval text (teacher-forced through the runtime's decode "
            "loop): early = its first quarter, late = its last quarter. Full-context peak RSS: the runtime's peak with "
            "its KV cache full, in a fresh process.", "",
            "| " + " | ".join(LONG_COLUMNS) + " |", "|" + "---|" * len(LONG_COLUMNS),
            *("| " + " | ".join(row_cell(r, c) for c in LONG_COLUMNS) + " |" for r in rows)]


def machine_info(threads: int | None = None) -> dict:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "executorch", "torchao", "onnxruntime", "onnxruntime-genai", "onnx", "coremltools",
                "llama-cpp-python", "gguf", "transformers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "system": f"{platform.system()} {platform.release()}", "cpu_count": os.cpu_count(),
            "threads": threads or os.cpu_count(), "python": platform.python_version(),
            "smolship": __version__, "libraries": versions}


def build_report(bundles: list[Path], source_name: str | None = None, threads: int | None = None) -> dict:
    return {"source": source_name, "machine": machine_info(threads), "rows": [bundle_row(b) for b in bundles]}


def markdown(report: dict) -> str:
    cols = ["bundle", "size_mb", "kld_mean", "top1_agreement", "nll_delta", "greedy_match", "prefill_tok_s",
            "decode_tok_s", "ttft_ms", "peak_rss_mb", "runtime_ran"]
    lines = [f"# smolship report: {report.get('source')}", "",
             f"Machine: {report['machine']['system']} {report['machine']['machine']}, "
             f"{report['machine']['threads']} threads; libraries: "
             + ", ".join(f"{k} {v}" for k, v in report["machine"]["libraries"].items()), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in report["rows"]:  # a latency figure measured under load is marked, never shown as fact
        lines.append("| " + " | ".join(row_cell(r, c) for c in cols) + " |")
    notes = {r["runtime_note"] for r in report["rows"] if r.get("runtime_note")}
    notes |= {f"{r['bundle']}: latency unreliable: {r['latency_note']}" for r in report["rows"] if unreliable(r)}
    notes |= {f"{r['bundle']}: long context: {r['long_context_note']}" for r in report["rows"] if r.get("long_context_note")}
    lines += long_context_markdown(report["rows"])
    lines += [""] + [f"- {n}" for n in sorted(notes)]
    return "\n".join(lines) + "\n"




def write_reports(out: Path, bundles: list[Path], source_name: str | None = None, threads: int | None = None) -> dict:
    report = build_report(bundles, source_name, threads)
    out = Path(out)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(report_html(report, md))
    return report
