"""`smolship validate` (parity + latency of bundles) and `smolship bench` (latency only)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from smolship.cli.common import (EvalFileOpt, EvalTokensOpt, JsonOpt, NoCacheOpt, ThreadsOpt, VerifyOpt, open_bundle,
                                 out_console, print_json, progress_bar)
from smolship.cli.report_view import bundle_rows_table
from smolship.errors import SmolshipError
from smolship.targets import get_target
from smolship.validation.latency import LatencySettings, latency_in_worker
from smolship.validation.report import bundle_row, machine_info
from smolship.validation.validate import ValidationSettings, Validator, source_for


def _manifests(bundles: list[Path], verify: bool = True) -> list[dict]:
    return [open_bundle(b, verify) for b in bundles]


def validate(
    bundles: List[Path] = typer.Argument(..., help="Bundle folders written by `smolship export`."),
    model: Optional[str] = typer.Option(None, "--model", help="Source model, if not where the manifest says."),
    eval_file: Optional[Path] = EvalFileOpt,
    eval_tokens: Optional[int] = EvalTokensOpt,
    latency: bool = typer.Option(True, "--latency/--no-latency", help="Also measure latency."),
    threads: Optional[int] = ThreadsOpt,
    gate: bool = typer.Option(False, "--gate", help="Exit 1 when a bundle breaks its thresholds (CI gate)."),
    max_kld: Optional[float] = typer.Option(None, "--max-kld", help="Gate: highest allowed kld_mean."),
    min_top1: Optional[float] = typer.Option(None, "--min-top1", help="Gate: lowest allowed top1_agreement."),
    min_decode_tok_s: Optional[float] = typer.Option(None, "--min-decode-tok-s", help="Gate: lowest allowed decode tok/s."),
    long_context: bool = typer.Option(False, "--long-context", help="Also measure parity over a context filled to the "
                                      "bundle's max_seq_len (early vs last quarter) and peak RSS with the cache full."),
    max_late_kld: Optional[float] = typer.Option(None, "--max-late-kld", help="Gate: highest allowed kld_mean over the "
                                                 "last quarter of a full context (implies --long-context)."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write JUnit XML (one test case per bundle)."),
    arch: Optional[List[str]] = typer.Option(None, "--arch", help="Also run the bundle in the arm64 build of its runtime "
                                             "under qemu: arm64 or arm64:<cpu> (repeatable; `make setup-arm64` first)."),
    runtime: Optional[List[str]] = typer.Option(None, "--runtime", help="Also run the bundle in another runtime version: "
                                                "apps (the versions the example apps pin) or executorch==X.Y.Z (repeatable)."),
    platform_tokens: int = typer.Option(256, "--platform-tokens", help="Eval tokens for --arch / --runtime runs."),
    record: bool = typer.Option(False, "--record", help="Write the --arch / --runtime rows into each bundle's "
                                "manifest and model card."),
    json_out: bool = JsonOpt,
    verify: bool = VerifyOpt,
    no_cache: bool = NoCacheOpt,
):
    """Measure each bundle against the PyTorch reference in its real runtime (and gate it with --gate).

    With --arch / --runtime: parity natively and in each named runtime build over the same tokens, side by side."""
    from smolship import cache
    from smolship.cache import run_store
    from smolship.preflight import check_validate

    check_validate(eval_tokens, threads, max_kld, min_top1, min_decode_tok_s, eval_file, max_late_kld)
    long_context = long_context or max_late_kld is not None  # a bound on it needs the measurement
    reused = cache.usage()
    with run_store(not no_cache):
        if arch or runtime:
            return validate_platforms(bundles, arch or [], runtime or [], model, eval_file, platform_tokens, record,
                                      json_out, verify)
        if gate or junit:
            from smolship.validation.gates import check_project_gate, load_project_gate

            check_project_gate(load_project_gate())
        manifests = _manifests(bundles, verify)
        settings = ValidationSettings(eval_file=eval_file, eval_tokens=eval_tokens or None, measure_latency=latency,
                                      long_context=long_context,
                                      latency=LatencySettings(threads=threads, full_context=long_context))
        validators: dict[str, Validator] = {}
        rows = []
        for bundle, manifest in zip(bundles, manifests):
            key = manifest["source"].get("sha256") or manifest["source"]["ref"]
            if key not in validators:
                validators[key] = Validator(source_for(manifest, model), settings)
            with progress_bar(not json_out) as progress:
                result = validators[key].validate(bundle, manifest, progress)
            rows.append(bundle_row(bundle, manifest, result))
        gate_results = None
        if gate or junit:
            from smolship.validation.gates import Thresholds, check, load_project_gate, thresholds_for

            project, cli = load_project_gate(), Thresholds(max_kld, min_top1, min_decode_tok_s, max_late_kld)
            gate_results = [check(r, thresholds_for(r["precision"], project, cli)) for r in rows]
            if junit:
                from smolship.validation.gates import write_junit

                write_junit(junit, gate_results, rows)
        if json_out:
            out = {"machine": machine_info(threads), "rows": rows, "cache": cache.usage_since(reused)}
            if gate_results is not None:
                out["gate"] = [vars(g) for g in gate_results]
            print_json(out)
        else:
            out_console.print(bundle_rows_table(rows, "smolship validate"))
            for label, how in cache.usage_since(reused).items():
                out_console.print(f"[dim]{label}: {how}[/]")
            for r in rows:
                if r.get("runtime_note"):
                    out_console.print(f"[yellow]{r['bundle']}:[/] {r['runtime_note']}")
            for g in gate_results or []:
                status = "[green]PASS[/]" if g.passed else "[red]FAIL[/]"
                out_console.print(f"{status} {g.bundle}" + "".join(f"\n    {m}" for m in g.failures + g.notes))
        if gate and gate_results and not all(g.passed for g in gate_results):
            raise typer.Exit(1)


def validate_platforms(bundles: list[Path], arch: list[str], runtime: list[str], model: Optional[str],
                       eval_file: Optional[Path], tokens: int, record: bool, json_out: bool, verify: bool) -> None:
    """Each bundle natively, in the arm64 build of its runtime and in other runtime versions, on the same tokens."""
    from smolship.validation import platforms as P
    from smolship.validation.validate import save_platform_rows

    if not 32 <= tokens <= 8192:
        raise SmolshipError(f"--platform-tokens {tokens} is out of range.", "Use 32 to 8192 (the issue's floor for arm64 is 256).")
    manifests = _manifests(bundles, verify)
    arm = [P.parse_arch(a) for a in arch]  # every environment is checked before any work starts
    plans = [arm + [p for r in runtime for p in P.parse_runtime(r, m["target"])] for m in manifests]
    for b, m in zip(bundles, manifests):
        if m["target"] not in P.HOSTED_TARGETS:
            raise SmolshipError(f"{b}: a {m['target']} bundle cannot run off this machine's own runtime.",
                                f"--arch / --runtime take {', '.join(sorted(P.HOSTED_TARGETS))} bundles.")
    validators: dict[str, Validator] = {}
    out = []
    for bundle, manifest, plats in zip(bundles, manifests, plans):
        key = manifest["source"].get("sha256") or manifest["source"]["ref"]
        if key not in validators:
            validators[key] = Validator(source_for(manifest, model), ValidationSettings(eval_file=eval_file, eval_tokens=tokens))
        with progress_bar(not json_out) as progress:
            rows = validators[key].platform_rows(bundle, manifest, plats, progress, tokens=tokens)
        if record:
            save_platform_rows(bundle, manifest, rows)
        out.append({"bundle": str(bundle), "target": manifest["target"], "recipe": manifest["quant"]["recipe"], "platforms": rows})
    if json_out:
        print_json({"rows": out})
        return
    from rich.table import Table

    table = Table(title="smolship validate: the same bundle in each runtime build (logits only; emulated time is no speed)")
    for col in ("bundle", "runtime", "arch", "cpu features", "kld_mean", "top1", "vs native kld", "vs native top1", "finding"):
        table.add_column(col)
    for b in out:
        for r in b["platforms"]:
            if "error" in r:
                table.add_row(Path(b["bundle"]).name, r["platform"], "", "", "not run", "", "", "", r["error"])
                continue
            vs = r.get("vs_native") or {}
            table.add_row(Path(b["bundle"]).name, " ".join(f"{k} {v}" for k, v in r["versions"].items()) + f" ({r['platform']})",
                          r["arch"], " ".join(r["cpu_features"]), f"{r['kld_mean']:.4g}", f"{r['top1_agreement']:.3f}",
                          f"{vs['kld_mean']:.4g}" if vs else "-", f"{vs['top1_agreement']:.3f}" if vs else "-",
                          "yes" if r.get("finding") else "")
    out_console.print(table)


def bench(
    bundles: Optional[List[Path]] = typer.Argument(None, help="Bundle folders written by `smolship export`."),
    threads: Optional[List[int]] = typer.Option(None, "--threads", help="Thread counts to measure (repeatable)."),
    runs: int = typer.Option(3, "--runs", help="Timed runs per measurement (median reported)."),
    reference: bool = typer.Option(False, "--reference", help="Also measure the PyTorch reference runner."),
    model: Optional[str] = typer.Option(None, "--model", help="Reference model when no bundle is given (default: bundled model)."),
    json_out: bool = JsonOpt,
    verify: bool = VerifyOpt,
):
    """Latency of each bundle in its real runtime: prefill/decode tok/s, TTFT, peak RSS, size."""
    from smolship.preflight import check_bench

    bundles = bundles or []
    if not bundles and not reference:
        raise SmolshipError("Nothing to measure.", "Pass bundle folders, or --reference for the PyTorch reference runner.")
    check_bench(runs, threads or [])
    manifests = _manifests(bundles, verify)
    rows = []
    for t in threads or [None]:
        settings = LatencySettings(runs=runs, threads=t)
        if reference:
            spec = model or (manifests[0]["source"]["ref"] if manifests else "")
            rows.append({"bundle": "reference (PyTorch fp32)", "target": "reference", "recipe": "fp32",
                         **latency_in_worker(f"reference:{spec}", settings)})
        for bundle, manifest in zip(bundles, manifests):
            row = bundle_row(bundle, manifest, validation={})
            can_run, why = get_target(manifest["target"]).can_run()
            row.update(latency_in_worker(bundle, settings) if can_run else {"runtime_ran": False, "runtime_note": why})
            rows.append(row)
    if json_out:
        print_json({"machine": machine_info(), "rows": rows})
    else:
        cols = ["bundle", "size_mb", "threads", "prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb"]
        out_console.print(bundle_rows_table(rows, "smolship bench", cols))
