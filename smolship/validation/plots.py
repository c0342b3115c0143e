"""Self-contained HTML report: the results table plus two SVG plots inlined (opens offline).

A latency figure that validation flagged as measured under load (`latency.unreliable`) carries
"(unreliable)" in every cell and is drawn hollow, labelled the same, in the speed plot."""

from __future__ import annotations

import html
import io

from smolship.validation.latency import SPEED_KEYS, UNRELIABLE, unreliable

TARGET_COLOURS = {"onnx": "#1f77b4", "coreml": "#ff7f0e", "executorch": "#2ca02c", "gguf": "#d62728"}


def scatter_svg(rows: list[dict], x: str, y: str, title: str, logy: bool = False) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = y in SPEED_KEYS
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    flagged = False
    for target, colour in TARGET_COLOURS.items():
        pts = [(r[x], r[y], r["recipe"], speed and unreliable(r)) for r in rows
               if r.get("target") == target and r.get(x) is not None and r.get(y) is not None]
        if not pts:
            continue
        good, bad = [p for p in pts if not p[3]], [p for p in pts if p[3]]
        if good:
            ax.scatter([p[0] for p in good], [p[1] for p in good], color=colour, label=target, s=40)
        if bad:  # measured under load: hollow, and said so beside the point
            flagged = True
            ax.scatter([p[0] for p in bad], [p[1] for p in bad], facecolors="none", edgecolors=colour, s=40,
                       label=None if good else target)
        for px, py, label, bad_point in pts:
            ax.annotate(f"{label} {UNRELIABLE}" if bad_point else label, (px, py), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    if flagged:
        title += f"; hollow = {UNRELIABLE[1:-1]} (measured under load)"
    if logy:
        ax.set_yscale("symlog", linthresh=1e-5)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # labels stay text: searchable, the mark readable
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def report_html(report: dict, markdown_table: str) -> str:
    rows = report["rows"]
    cols = ["bundle", "size_mb", "kld_mean", "top1_agreement", "nll_delta", "greedy_match", "prefill_tok_s",
            "decode_tok_s", "ttft_ms", "peak_rss_mb", "runtime_ran"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(row_cell(r, c))}</td>" for c in cols) + "</tr>" for r in rows)
    long_table = _long_context_html(rows)
    m = report["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    notes = sorted({r["runtime_note"] for r in rows if r.get("runtime_note")}
                   | {f"{r['bundle']}: latency unreliable: {r['latency_note']}" for r in rows if unreliable(r)}
                   | {f"{r['bundle']}: long context: {r['long_context_note']}" for r in rows if r.get("long_context_note")})
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>smolship report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}.plots{{display:flex;flex-wrap:wrap;gap:2em}}</style></head><body>
<h1>smolship report: {html.escape(str(report.get('source')))}</h1>
<p>Machine: {html.escape(m['system'])} {html.escape(m['machine'])}, {m['cpu_count']} cores, {m['threads']} threads.
Libraries: {html.escape(libs)}.</p>
<table><tr>{head}</tr>{body}</table>
{long_table}
{''.join(f'<p><em>{html.escape(n)}</em></p>' for n in notes)}
<div class="plots"><div>{scatter_svg(rows, 'size_mb', 'kld_mean', 'kld_mean vs size (lower-left is better)', logy=True)}</div>
<div>{scatter_svg(rows, 'size_mb', 'decode_tok_s', 'decode tok/s vs size')}</div></div>
</body></html>
"""


def _long_context_html(rows: list[dict]) -> str:
    """The long-context table (issue 29), when any bundle was measured at full context."""
    from smolship.validation.report import LONG_COLUMNS

    rows = [r for r in rows if any(r.get(c) is not None for c in LONG_COLUMNS[1:])]
    if not rows:
        return ""
    head = "".join(f"<th>{c}</th>" for c in LONG_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(row_cell(r, c))}</td>" for c in LONG_COLUMNS) + "</tr>"
                   for r in rows)
    return (f"<h2>Long context</h2><p>Parity over a context filled to max_seq_len with eval text: early = its first "
            f"quarter, late = its last quarter; full-context peak RSS with the KV cache full.</p>"
            f"<table><tr>{head}</tr>{body}</table>")


def cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 0.01 else f"{v:.4g}"
    return "-" if v is None else str(v)


def row_cell(row: dict, col: str) -> str:
    """A report row's value as text, marked when it is a latency figure measured under load."""
    text = cell(row.get(col))
    return f"{text} {UNRELIABLE}" if row.get(col) is not None and unreliable(row, col) else text
