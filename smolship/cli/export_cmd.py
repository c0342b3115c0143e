"""`smolship export`: model -> one validated bundle per (target, recipe) under --out."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from smolship.bundle import check_output_folder
from smolship.cli.common import (EvalFileOpt, EvalTokensOpt, JsonOpt, NoCacheOpt, ThreadsOpt, console, out_console,
                                 print_json)
from smolship.cli.report_view import bundle_rows_table, columns_for_width
from smolship.errors import SmolshipError
from smolship.export import bundle_name
from smolship.targets import TARGET_NAMES, ExportOptions, get_target, resolve_recipe
from smolship.validation.latency import LatencySettings
from smolship.validation.validate import ValidationSettings


def plan(targets: list[str], quant: str | None) -> list[tuple[str, object]]:
    """(target, recipe) pairs, checked before any heavy work starts."""
    pairs = []
    for name in targets:
        target = get_target(name)
        if quant is not None and len(targets) > 1 and quant not in target.recipes:
            continue  # with --target all, a recipe applies to the targets that have it
        pairs += [(name, r) for r in resolve_recipe(target, quant)]
    if not pairs:
        raise SmolshipError(f"No target has a recipe named '{quant}'.",
                            "Run `smolship export --help` and pick a recipe of the chosen target.")
    return pairs


def target_options(settings: list[str], targets: list[str]) -> dict[str, dict]:
    """``--set onnx.int4_method=offset-gptq`` -> {"onnx": {"int4_method": "offset-gptq"}}; VALUE is read as
    JSON when it parses (64, true, ["a", "b"]) and as text otherwise. Each target's knobs dataclass checks
    its set here, before any work."""
    from smolship.targets.knobs import parse

    extras: dict[str, dict] = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        name, dot, knob_name = key.partition(".")
        if not sep or not dot or not name or not knob_name:
            raise SmolshipError(f"--set '{item}' is not TARGET.OPTION=VALUE.",
                                "Write it like --set onnx.int4_method=offset-gptq; `smolship export --options` lists them.")
        if name not in targets:
            raise SmolshipError(f"--set '{item}' is for the {name} target, which this export does not run "
                                f"({', '.join(targets)}).", f"Add --target {name}, or drop this --set.")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        extras.setdefault(name, {})[knob_name] = value
    for name, extra in extras.items():
        parse(get_target(name).knobs, extra, name)
    return extras


def print_options() -> None:
    """Every target's --set options: name, default, what it does."""
    from rich.markup import escape
    from rich.table import Table

    from smolship.targets.knobs import describe

    table = Table("option", "default", "what it does", title="smolship export --set TARGET.OPTION=VALUE",
                  title_justify="left")
    for name in TARGET_NAMES:
        for knob_name, default, help_text in describe(get_target(name).knobs):
            table.add_row(f"{name}.{knob_name}", escape(default), escape(help_text))
    out_console.print(table)


def remove_if_only_logs(out: Path, existed: bool) -> None:
    """A failed export into a new folder leaves nothing behind, not even its library logs."""
    if existed or not out.is_dir():
        return
    entries = list(out.iterdir())
    if all(p.is_file() and p.name.startswith("export-") and p.suffix == ".log" for p in entries):
        for p in entries:
            p.unlink()
        out.rmdir()


def export(
    model: Optional[str] = typer.Argument(None, help="GGUF file, HF folder, hub id or random:<preset>. Default: bundled SmolLM2-135M-Instruct."),
    target: str = typer.Option("all", "--target", "-t", help=f"One of {', '.join(TARGET_NAMES)}, or all."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", help="Quant recipe (default: each target's default recipes)."),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder; bundles go to OUT/<target>-<quant>/."),
    max_seq_len: int = typer.Option(2048, "--max-seq-len", help="KV-cache size of the artifact."),
    keep_embeddings_fp: bool = typer.Option(False, "--keep-embeddings-fp", help="Keep embedding/lm_head in 16-bit in low-bit recipes."),
    max_kld: Optional[float] = typer.Option(None, "--max-kld", help="Parity budget: keep the smallest recipe with kld_mean ≤ this."),
    jobs: str = typer.Option("auto", "--jobs", "-j", help="Bundles exported in parallel (one process each): auto "
                             "(as many as the cores and free memory hold) or a count. Latency is measured after "
                             "every export, one bundle at a time."),
    force: bool = typer.Option(False, "--force", help="Replace existing bundles."),
    device_memory: Optional[str] = typer.Option(None, "--device-memory", help="Memory the app may use on the device "
                                                "(3GB, 3000MB, 2.5GiB): refuse, before any work, a bundle whose "
                                                "weights (estimated) + KV cache at --max-seq-len exceed it."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Measure parity and latency (on by default)."),
    long_context: bool = typer.Option(False, "--long-context", help="Also measure parity over a context filled to "
                                      "--max-seq-len (early vs last quarter) and peak RSS with the cache full "
                                      "(one decode per position: ~20 s a bundle at 2,048)."),
    eval_file: Optional[Path] = EvalFileOpt,
    eval_tokens: Optional[int] = EvalTokensOpt,
    threads: Optional[int] = ThreadsOpt,
    json_out: bool = JsonOpt,
    settings_: list[str] = typer.Option([], "--set", help="A target option, TARGET.OPTION=VALUE (repeatable); "
                                        "--options lists them."),
    options_list: bool = typer.Option(False, "--options", help="List every target's --set options and exit."),
    no_cache: bool = NoCacheOpt,
):
    """Export MODEL to one bundle per target and recipe, each validated in its real runtime."""
    from smolship.cache import run_store
    from smolship.export_matrix import TargetJob, measure_latency_after, one_job_per_bundle, run_jobs, run_target_job

    if options_list:
        print_options()
        return
    targets = list(TARGET_NAMES) if target == "all" else [target]
    if max_kld is not None and quant is not None:
        raise SmolshipError("--max-kld picks the recipe itself, so it cannot be combined with --quant.",
                            "Drop --quant, or drop --max-kld to export that exact recipe.")
    if long_context and not validate:
        raise SmolshipError("--long-context measures the bundles, but --no-validate turns measurement off.",
                            "Drop --no-validate (or drop --long-context).")
    if max_kld is not None and not validate:
        raise SmolshipError("--max-kld needs measured parity, but --no-validate turns measurement off.",
                            "Drop --no-validate (or drop --max-kld).")
    pairs = plan(targets, quant)
    extras = target_options(settings_, targets)
    # numeric options and memory, before any work (issue 17; smolship/preflight.py)
    from smolship.preflight import check_export

    # one entry per bundle: --jobs auto and the memory check count export processes, one per bundle
    max_seq_len, notes, jobs = check_export(model, [n for n, _ in pairs] if max_kld is None else targets, max_seq_len,
                                            eval_tokens, threads, jobs, max_kld, validate)
    if device_memory is not None:  # weights (estimate) + KV cache at max_seq_len against the budget, before any work
        from smolship.device_budget import check_device_memory
        from smolship.preflight import peek_config

        every = [(t, r.name, r.precision.value) for t in targets for r in get_target(t).recipes.values()]
        check_device_memory(device_memory, peek_config(model), [(n, r.name, r.precision.value) for n, r in pairs],
                            max_seq_len, every)
    for note in notes:
        console.print(f"[yellow]Note:[/] {note}")
    check_output_folder(out)
    existed = out.exists()
    if max_kld is None:
        for name, recipe in pairs:
            final = out / bundle_name(name, recipe.name)
            if final.exists() and any(final.iterdir()) and not force:
                raise SmolshipError(f"The bundle folder '{final}' already exists and is not empty.",
                                    "Pass --force to replace it, or choose another --out folder.")
    settings = None
    if validate:
        settings = ValidationSettings(eval_file=eval_file, eval_tokens=eval_tokens or None, long_context=long_context,
                                      latency=LatencySettings(threads=threads, full_context=long_context))
    options = ExportOptions(max_seq_len=max_seq_len, keep_embeddings_fp=keep_embeddings_fp)
    job_list = [TargetJob(model, t, [r.name for n, r in pairs if n == t], out, replace(options, extra=extras.get(t, {})),
                          settings, force, max_kld, show_progress=not json_out, latency_after=True)
                for t in targets if any(n == t for n, _ in pairs)]
    t0 = time.perf_counter()
    try:
        with run_store(not no_cache):
            split = one_job_per_bundle(job_list) if jobs > 1 else job_list
            outcomes = [run_target_job(job_list[0])] if len(split) == 1 else run_jobs(split, jobs)
        if settings is not None:  # on a machine no export is loading any more, one bundle at a time
            measure_latency_after(outcomes, settings.latency, show_progress=not json_out)
    finally:
        remove_if_only_logs(out, existed)
    failed = [o for o in outcomes if o.error]
    if failed and len(failed) == len(outcomes) and len({o.error for o in failed}) == 1 and failed[0].fix and "Traceback" not in failed[0].fix:
        raise SmolshipError(failed[0].error, failed[0].fix)  # e.g. a bad model: the same clear error for every target
    for o in outcomes:
        for t in o.tried:
            console.print(f"budget {o.target}: {t['recipe']:<8} {t['size_mb']:>8} MB  kld_mean {t['kld_mean']}"
                          f"  {'fits' if t['fits'] else 'over budget'}")
    bundles = [Path(b) for o in outcomes for b in o.bundles]
    report = None
    if bundles:
        from smolship.validation.report import write_reports

        report = write_reports(out, bundles, source_name=model or "SmolLM2-135M-Instruct", threads=threads)
        report["export_seconds"] = round(time.perf_counter() - t0, 1)
    if json_out:
        print_json({**(report or {}), "failures": [{"target": o.target, "error": o.error} for o in failed]})
    elif report:
        out_console.print(bundle_rows_table(report["rows"], f"smolship export: {report['source']}",
                                            columns_for_width(out_console.width)))
        out_console.print(f"Report: {(out / 'report.html').resolve()}  (also report.md, report.json; "
                          f"libraries' output in {out}/export-<target>.log)", highlight=False, soft_wrap=True)
    for o in failed:
        console.print(f"[bold red]{o.target} failed:[/] {o.error}\n{o.fix or ''}")
        if o.log and Path(o.log).is_file():
            console.print(f"  libraries' output for {o.target}: {o.log}")
    if failed:
        raise typer.Exit(1)
