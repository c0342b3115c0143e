"""A latency figure that validation flagged (measured under load) says so wherever it is shown: report.md,
report.html's table and its decode plot, the terminal tables (export, validate, bench, inspect), the model
card, the matrix report and the gate's messages. Figures that load does not move (size, kld) stay plain."""

from __future__ import annotations

import re

from rich.console import Console

from smolship.validation.latency import UNRELIABLE

NOTE = "other processes used 64% of the CPU (limit 25%)"
LOADED = {"bundle": "onnx-int8", "target": "onnx", "recipe": "int8", "precision": "int8", "size_mb": 170.0,
          "kld_mean": 0.0031, "top1_agreement": 0.97, "prefill_tok_s": 812.0, "decode_tok_s": 19.1, "ttft_ms": 157.6,
          "peak_rss_mb": 420.0, "runtime_ran": True, "latency_reliable": False, "latency_note": NOTE}
QUIET = {**LOADED, "bundle": "gguf-q8_0", "target": "gguf", "recipe": "q8_0", "decode_tok_s": 151.0,
         "latency_reliable": True, "latency_note": None}
REPORT = {"source": "x", "machine": {"system": "Linux", "machine": "x86_64", "cpu_count": 2, "threads": 2,
                                     "libraries": {}}, "rows": [LOADED, QUIET]}


def test_html_report_table_and_decode_plot_mark_it():
    from smolship.validation.plots import report_html, scatter_svg
    from smolship.validation.report import markdown

    page = report_html(REPORT, markdown(REPORT))
    assert "<td>19.1 (unreliable)</td>" in page and "<td>151</td>" in page
    assert f"onnx-int8: latency unreliable: {NOTE}" in page
    decode = scatter_svg(REPORT["rows"], "size_mb", "decode_tok_s", "decode tok/s vs size")
    assert f"int8 {UNRELIABLE}" in decode and "q8_0" in decode and f"q8_0 {UNRELIABLE}" not in decode
    assert "hollow = unreliable" in decode
    kld = scatter_svg(REPORT["rows"], "size_mb", "kld_mean", "kld_mean vs size")
    assert UNRELIABLE not in kld  # parity is not a speed: nothing to mark


def test_terminal_tables_mark_it():
    from smolship.cli.report_view import COLUMNS, COMPACT_COLUMNS, bundle_rows_table

    for columns in (COLUMNS, COMPACT_COLUMNS, ["bundle", "size_mb", "threads", "prefill_tok_s", "decode_tok_s",
                                               "ttft_ms", "peak_rss_mb"]):  # export/validate, 80 columns, bench
        console = Console(record=True, width=250)
        console.print(bundle_rows_table(REPORT["rows"], "t", columns))
        text = console.export_text()
        assert "19.1 (unreliable)" in text and "151 (unreliable)" not in text
        assert "measured while other work loaded the machine" in text
        assert re.search(r"170\s", text) and "170 (unreliable)" not in text  # size is not a speed


def test_model_card_marks_it():
    from smolship.model_card import _summary

    manifest = {"source": {"name": "m", "kind": "random", "ref": "random:tiny"}, "created": "now",
                "smolship_version": "0", "target": "onnx", "max_seq_len": 512,
                "quant": {"recipe": "int8", "precision": "int8", "description": "d"},
                "validation": {**LOADED, "threads": 2}}
    card = "\n".join(_summary(manifest))
    assert "| decode_tok_s | 19.1 (unreliable) |" in card and "| kld_mean | 0.0031 |" in card
    assert f"measured under load: {NOTE}" in card


def test_gate_and_matrix_report_say_so():
    from smolship.matrix.report import _md_table
    from smolship.validation.gates import Thresholds, check

    failed = check(LOADED, Thresholds(min_decode_tok_s=100))
    assert not failed.passed and f"decode_tok_s = 19.1 {UNRELIABLE}: {NOTE}" in failed.failures[0]
    passed = check({**LOADED, "decode_tok_s": 120.0}, Thresholds(min_decode_tok_s=100))
    assert passed.passed and any(UNRELIABLE in n for n in passed.notes)
    table = "\n".join(_md_table(REPORT["rows"], ["bundle", "decode_tok_s"]))
    assert "| onnx-int8 | 19.1 (unreliable) |" in table and "| gguf-q8_0 | 151 |" in table
