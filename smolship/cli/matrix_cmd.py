"""`smolship matrix SPEC`: every (model, target) of a TOML spec, on local processes or on Ray, one report."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from smolship.cli.common import JsonOpt, console, out_console, print_json
from smolship.cli.report_view import COLUMNS, bundle_rows_table


@contextlib.contextmanager
def job_display(enabled: bool):
    """Yield on_event(event): one live line per job on a terminal; finished/retried jobs as plain lines."""
    live = enabled and console.is_terminal
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeElapsedColumn(), console=console, transient=True, disable=not live)
    tasks: dict[str, int] = {}

    def on_event(e: dict) -> None:
        key, kind = e["job"], e["kind"]
        if key not in tasks and live:
            tasks[key] = bar.add_task(f"[bold]{key}[/] waiting", total=1.0)
        if kind == "progress" and live:
            bar.update(tasks[key], description=f"[bold]{key}[/] {e['bundle']}: {e['desc'][:40]}",
                       completed=max(0.0, min(1.0, e["frac"])))
        elif kind == "start" and live:
            bar.update(tasks[key], description=f"[bold]{key}[/] started on {e.get('host')}", completed=0)
        elif kind in ("done", "failed", "retry") and enabled:
            if kind == "done":
                line = f"[green]done[/] {key} on {e.get('host')} in {e.get('seconds')} s: {', '.join(e.get('bundles', []))}"
            elif kind == "failed":
                line = f"[red]failed[/] {key}: {e.get('error')}"
            else:
                line = f"[yellow]retry[/] {key}: its worker died ({e.get('why', 'lost')}), attempt {e.get('attempt')}"
            bar.console.print(line, highlight=False)
            if live and kind != "retry":
                bar.update(tasks[key], visible=False)

    with bar:
        yield on_event


def matrix(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="TOML spec: models, targets, recipes or max_kld, eval and gate settings."),
    ray: bool = typer.Option(False, "--ray", help="Run each job as a Ray task (a local Ray unless --address names a cluster)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to run on: auto, ray://head:10001, or host:port."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output folder (overrides the spec's `out`)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Local backend: jobs run at once (one process each)."),
    force: bool = typer.Option(False, "--force", help="Replace existing bundles."),
    gate: bool = typer.Option(False, "--gate", help="Exit 1 when any bundle breaks its thresholds or any job failed."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write JUnit XML (one test case per bundle)."),
    json_out: bool = JsonOpt,
):
    """Export and validate every model x target of SPEC; one report over all of them."""
    from smolship.matrix import load_spec, run_matrix

    spec = load_spec(spec_path)
    spec.out = out or spec.out
    with job_display(not json_out) as on_event:
        report = run_matrix(spec, ray=ray or address is not None, address=address, jobs=jobs,
                            force=force, on_event=on_event)
    if junit:
        from smolship.validation.gates import GateResult, write_junit

        write_junit(junit, [GateResult(**g) for g in report["gate"]], report["rows"])
    if json_out:
        print_json(report)
    else:
        out_console.print(bundle_rows_table(report["rows"], f"smolship matrix ({report['backend']}, {report['seconds']} s)",
                                            ["bundle", *COLUMNS[1:], "host"]))
        for g in report["gate"]:
            if not g["passed"]:
                out_console.print(f"[red]FAIL[/] {g['bundle']}" + "".join(f"\n    {m}" for m in g["failures"]))
        out_console.print(f"Report: {(Path(spec.out) / 'report.html').resolve()} (also report.md, report.json)",
                          highlight=False, soft_wrap=True)
    for f in report["failures"]:
        console.print(f"[bold red]{f['job']} failed:[/] {f['error']}\n{f['fix'] or ''}", highlight=False)
    if report["failures"] or (gate and not all(g["passed"] for g in report["gate"])):
        raise typer.Exit(1)
