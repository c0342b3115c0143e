"""Terminal tables for bundle results (shared by export, validate and bench)."""

from __future__ import annotations

from smolship.cli.common import fmt, table
from smolship.validation.latency import UNRELIABLE, unreliable

COLUMNS = ["bundle", "size_mb", "kld_mean", "top1_agreement", "max_abs_logit_diff", "nll_delta", "greedy_match",
           "prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb", "runtime_ran"]


# What fits an 80-column terminal: the figures a person checks first (report.md / --json have them all).
COMPACT_COLUMNS = ["bundle", "size_mb", "kld_mean", "top1_agreement", "greedy_match", "decode_tok_s", "runtime_ran"]


def columns_for_width(width: int) -> list[str]:
    return COLUMNS if width >= 150 else COMPACT_COLUMNS


def bundle_rows_table(rows: list[dict], title: str, columns: list[str] = COLUMNS):
    short = {"top1_agreement": "top1", "max_abs_logit_diff": "max|Δlogit|", "greedy_match": "greedy",
             "prefill_tok_s": "prefill tok/s", "decode_tok_s": "decode tok/s", "peak_rss_mb": "peak RSS MB",
             "runtime_ran": "runtime ran", "size_mb": "size MB"}
    t = table(title, [short.get(c, c) for c in columns], [[shown(r, c) for c in columns] for r in rows])
    if any(unreliable(r) for r in rows):
        t.caption = f"{UNRELIABLE}: measured while other work loaded the machine (report.md says how much)"
    return t


def shown(row: dict, col: str):
    """The cell's value; a latency figure measured under load as text with its mark."""
    value = row.get(col)
    return f"{fmt(value)} {UNRELIABLE}" if value is not None and unreliable(row, col) else value
