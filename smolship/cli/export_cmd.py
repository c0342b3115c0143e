"""`smolship export`: model -> one validated bundle per (target, recipe) under --out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from smolship.bundle import check_output_folder
from smolship.cli.common import EvalFileOpt, EvalTokensOpt, JsonOpt, ThreadsOpt, console, out_console, print_json, progress_bar
from smolship.cli.report_view import bundle_rows_table
from smolship.errors import SmolshipError
from smolship.export import bundle_name, export_bundle
from smolship.exporter.sources import load_model
from smolship.targets import TARGET_NAMES, ExportOptions, get_target, resolve_recipe
from smolship.validation.latency import LatencySettings
from smolship.validation.validate import ValidationSettings, Validator


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


def export(
    model: Optional[str] = typer.Argument(None, help="GGUF file, HF folder, hub id or random:<preset>. Default: bundled SmolLM2-135M-Instruct."),
    target: str = typer.Option("all", "--target", "-t", help=f"One of {', '.join(TARGET_NAMES)}, or all."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", help="Quant recipe (default: each target's default recipes)."),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder; bundles go to OUT/<target>-<quant>/."),
    max_seq_len: int = typer.Option(2048, "--max-seq-len", help="KV-cache size of the artifact."),
    keep_embeddings_fp: bool = typer.Option(False, "--keep-embeddings-fp", help="Keep embedding/lm_head in 16-bit in low-bit recipes."),
    force: bool = typer.Option(False, "--force", help="Replace existing bundles."),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="Measure parity and latency (on by default)."),
    eval_file: Optional[Path] = EvalFileOpt,
    eval_tokens: Optional[int] = EvalTokensOpt,
    threads: Optional[int] = ThreadsOpt,
    json_out: bool = JsonOpt,
):
    """Export MODEL to one bundle per target and recipe, each validated in its real runtime."""
    targets = list(TARGET_NAMES) if target == "all" else [target]
    pairs = plan(targets, quant)
    check_output_folder(out)
    existed = out.exists()
    for name, recipe in pairs:
        final = out / bundle_name(name, recipe.name)
        if final.exists() and any(final.iterdir()) and not force:
            raise SmolshipError(f"The bundle folder '{final}' already exists and is not empty.",
                                "Pass --force to replace it, or choose another --out folder.")
    try:
        source = load_model(model)
        settings = ValidationSettings(eval_file=eval_file, eval_tokens=eval_tokens or None,
                                      latency=LatencySettings(threads=threads))
        validator = Validator(source, settings) if validate else None
        options = ExportOptions(max_seq_len=max_seq_len, keep_embeddings_fp=keep_embeddings_fp)
        manifests = []
        for name, recipe in pairs:
            t0 = time.perf_counter()
            with progress_bar(not json_out) as progress:
                path, manifest = export_bundle(source, name, recipe, out, options, validator, force, progress)
            manifest["export_seconds"] = round(time.perf_counter() - t0, 1)
            manifests.append((path, manifest))
            if not json_out:
                console.print(f"[green]wrote[/] {path}  ({manifest['size_mb']} MB, {manifest['export_seconds']} s)")
    finally:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    from smolship.validation.report import write_reports

    report = write_reports(out, [p for p, _ in manifests], source_name=source.name, threads=threads)
    if json_out:
        print_json(report)
    else:
        out_console.print(bundle_rows_table(report["rows"], f"smolship export: {source.name}"))
        console.print(f"Report: {out / 'report.json'}")
