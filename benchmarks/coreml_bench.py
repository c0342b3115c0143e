"""Core ML export benchmark: conversion time, peak memory, size and (on the real 135M) weight parity.

Each case runs in a fresh process, so its peak RSS is its own and no conversion is reused:

    python -m benchmarks.coreml_bench                  # 135M: fp16 w8 w4 pal4 + ablation: bench-results/coreml_bench.json
    python -m benchmarks.coreml_bench --cases random:smollm2-1.7b:fp16,random:smollm2-1.7b:w4 --no-parity --variant big
    python -m benchmarks.coreml_bench --cases random:tiny:w8 --max-seq-len 256 --out /tmp/coreml_bench.json  # quick check

A case is MODEL:RECIPE (MODEL = default | random:<preset> | a path). The extra recipe ``w4-all4``
(4-bit embedding/lm_head too) is the ablation that shows why the 4-bit recipes keep it at 8 bits.
Core ML's runtime needs macOS 15+; on other machines the latency fields say so and parity is
`weight_parity` (weights read back out of the package, run through the reference graph).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, add_output_args, envelope, output_path, script_name, write

SCRIPT = script_name(__file__)

DEFAULT_CASES = ["default:fp16", "default:w8", "default:w4", "default:w4-all4", "default:pal4"]
ABLATION = "w4-all4"


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # k-means worker processes
    return round(max(own, kids) / 1024, 1)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _recipe(target, name: str):
    if name != ABLATION:
        return target.recipes[name]
    from smolship.targets.base import Precision, Recipe
    from smolship.targets.coreml.recipes import PLANS, Affine, Plan

    w4 = PLANS["w4"].linear
    PLANS[ABLATION] = Plan(w4, w4 if isinstance(w4, Affine) else Affine(4, 32, symmetric=False))
    return Recipe(ABLATION, Precision.INT4, "w4 with the embedding/lm_head at 4 bits too (ablation)")


def run_case(model: str, recipe_name: str, max_seq_len: int, parity: bool, eval_tokens: int) -> dict:
    """One export in this process; returns its figures."""
    from smolship.exporter import load_model
    from smolship.targets import ExportOptions, get_target

    t0 = time.perf_counter()
    source = load_model(None if model == "default" else model)
    load_s = time.perf_counter() - t0
    rss_after_load = _rss_mb()
    target = get_target("coreml")
    recipe = _recipe(target, recipe_name)
    last = [0.0]

    def progress(desc: str, frac: float) -> None:
        now = time.perf_counter()
        if now - last[0] > 30 or frac >= 1.0:  # pal4 takes minutes: show where it is
            print(f"  [{model}:{recipe_name}] {frac:4.0%} {desc}", file=sys.stderr, flush=True)
            last[0] = now

    with tempfile.TemporaryDirectory(prefix="coreml-bench-") as tmp:
        t0 = time.perf_counter()
        result = target.export(source, recipe, Path(tmp), ExportOptions(max_seq_len=max_seq_len), progress)
        export_s = time.perf_counter() - t0
        peak_export = _peak_rss_mb()
        size = sum(p.stat().st_size for p in (Path(tmp) / "model.mlpackage").rglob("*") if p.is_file())
        out = {
            "model": model, "source": source.name, "params": source.config.n_params, "recipe": recipe_name,
            "max_seq_len": max_seq_len, "load_s": round(load_s, 1), "export_s": round(export_s, 1),
            "convert_s": result.info["convert_s"], "compress_s": result.info["compress_s"],
            "save_s": result.info["save_s"], "rss_after_load_mb": rss_after_load,
            "peak_rss_export_mb": peak_export, "size_mb": round(size / 1e6, 2),
            "plan": result.info["plan"], "storage": result.info["storage"],
        }
        if parity:
            from smolship.targets import get_target
            from smolship.validation.parity import ParitySettings
            from smolship.validation.validate import ValidationSettings, Validator
            from smolship.validation.weight_parity import weight_parity

            manifest = {"max_seq_len": max_seq_len, "target_info": result.info}
            t0 = time.perf_counter()
            v = Validator(source, ValidationSettings(eval_tokens=eval_tokens, measure_latency=False,
                                                     parity=ParitySettings(greedy_prompts=2, greedy_tokens=16)))
            wp = weight_parity(get_target("coreml"), Path(tmp), manifest, source, v.reference, v.docs, v.settings.parity)
            out["weight_parity_s"] = round(time.perf_counter() - t0, 1)
            out["weight_parity"] = {k: wp[k] for k in ("kld_mean", "kld_p99", "top1_agreement", "max_abs_logit_diff",
                                                       "nll_delta", "greedy_match", "eval_tokens", "structure_ok",
                                                       "weight_rel_rmse", "fp16_graph")}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated MODEL:RECIPE list")
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--eval-tokens", type=int, default=1024)
    p.add_argument("--no-parity", action="store_true", help="skip weight_parity (e.g. for random models)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # MODEL:RECIPE, run in this process (used by the parent)
    add_output_args(p)
    a = p.parse_args(argv)
    out_file = output_path(a, SCRIPT)
    for case in a.cases.split(","):
        if ":" not in case:
            p.error(f"case {case!r} is not MODEL:RECIPE")
    if a.one:
        model, recipe = a.one.rsplit(":", 1)
        parity = not a.no_parity and not model.startswith("random:")
        print(json.dumps(run_case(model, recipe, a.max_seq_len, parity, a.eval_tokens)), flush=True)
        return
    from smolship.targets.coreml.runner import runtime_unavailable_reason

    results = []
    for case in a.cases.split(","):
        cmd = [sys.executable, "-m", f"benchmarks.{SCRIPT}", "--one", case, "--max-seq-len", str(a.max_seq_len),
               "--eval-tokens", str(a.eval_tokens)] + (["--no-parity"] if a.no_parity else [])
        print(f"running {case} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False, cwd=ROOT)
        if proc.returncode != 0:
            results.append({"case": case, "error": f"exit {proc.returncode}", "wall_s": round(time.perf_counter() - t0, 1)})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    why = runtime_unavailable_reason()
    report = envelope(SCRIPT, {"cases": a.cases, "max_seq_len": a.max_seq_len, "eval_tokens": a.eval_tokens,
                               "parity": not a.no_parity}, results, a.variant, runtime_ran=why is None,
                      runtime_note=why or "Core ML latency: run `smolship bench` on the bundles (macOS 15+).")
    write(out_file, report)
    print(json.dumps(report["rows"], indent=2))
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
