"""GGUF benchmark: every recipe (and a few ablations) exported from the real 135M with
`smolship.export.export_bundle`, validated inside llama.cpp by `Validator` (parity on the eval set),
and timed at 1 and 2 threads beside the PyTorch reference runner; one JSON file out (one row per case;
the reference's speed in `reference`).

    python -m benchmarks.gguf_bench                                  # all recipes + ablations: bench-results/gguf_bench.json
    python -m benchmarks.gguf_bench --cases q8_0,q4_k_m --eval-tokens 2048 --variant quick
    python -m benchmarks.gguf_bench --cases q4_k_m:pure --no-reference --variant pure
    python -m benchmarks.gguf_bench --model random:tiny --cases q8_0 --eval-tokens 64 --threads 1 --runs 1 \
        --out /tmp/gguf_bench.json                                   # a quick check

A case is RECIPE or RECIPE:VARIANT; VARIANTS below are the ablations the report needs (all-4-bit
embedding, 16-bit embedding, no importance matrix, llama.cpp's plain fallbacks). Latency is measured
in a fresh worker process per (bundle, threads) by the validation module, so peak RSS is the bundle's own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from benchmarks.common import add_model_arg, add_output_args, envelope, output_path, script_name, write

SCRIPT = script_name(__file__)

ALL_RECIPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_m", "q5_k_m", "q6_k"]
# variant -> (description, ExportOptions fields)
VARIANTS: dict[str, tuple[str, dict]] = {
    "all4": ("embedding quantized like the layers (all-4-bit ablation)", {"extra": {"embedding_type": "SAME"}}),
    "embfp": ("embedding kept at F16 (--keep-embeddings-fp)", {"keep_embeddings_fp": True}),
    "noimatrix": ("no importance matrix", {"extra": {"imatrix": False}}),
    "imatrix": ("through llama.cpp's quantizer with the importance matrix", {"extra": {"quantizer": "llama.cpp"}}),
    "pure": ("llama.cpp's own fallbacks for 576-wide rows (no source blocks kept)", {"extra": {"keep_source_blocks": False}}),
    "pure-noimatrix": ("llama.cpp's fallbacks and no importance matrix (llama.cpp's plain pipeline)",
                       {"extra": {"keep_source_blocks": False, "imatrix": False}}),
}
DEFAULT_CASES = ALL_RECIPES + ["q4_0:all4", "q4_k_m:all4", "q4_k_m:embfp", "q4_k_m:noimatrix", "q4_k_m:pure",
                               "q4_k_m:pure-noimatrix", "q4_0:imatrix"]
PARITY_KEYS = ("kld_mean", "kld_p99", "top1_agreement", "max_abs_logit_diff", "nll_ref", "nll_delta", "greedy_match",
               "eval_tokens")
LATENCY_KEYS = ("prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb")


def options_for(recipe, variant: str | None):
    from smolship.targets import ExportOptions

    if variant is None:
        return ExportOptions()
    if variant not in VARIANTS:
        sys.exit(f"unknown variant '{variant}'; choose from {', '.join(VARIANTS)}")
    fields = json.loads(json.dumps(VARIANTS[variant][1]))
    extra = fields.get("extra", {})
    if extra.get("embedding_type") == "SAME":  # 4 bits like the layers (Q4_0 for k-quants: a 576-wide Q4_K falls back to Q5_0)
        from smolship.targets.gguf.recipes import GGUF_RECIPES

        weight = GGUF_RECIPES[recipe.name].weight_type
        extra["embedding_type"] = weight if weight in ("Q4_0", "Q4_1") else "Q4_0"
    return ExportOptions(**fields)


def latency(what, threads: int, runs: int) -> dict:
    from smolship.validation.latency import LatencySettings, latency_in_worker

    result = latency_in_worker(str(what), LatencySettings(runs=runs, threads=threads))
    return {k: result[k] for k in LATENCY_KEYS}


def run_case(case: str, source, validator, out: Path, threads: list[int], runs: int) -> dict:
    """Export one case, validate it (unless validator is None), time it at each thread count."""
    from smolship.export import export_bundle
    from smolship.targets import get_target

    recipe_name, _, variant = case.partition(":")
    target = get_target("gguf")
    recipe = target.recipes[recipe_name]
    folder = out / (case.replace(":", "-"))
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    bundle, manifest = export_bundle(source, "gguf", recipe, folder, options_for(recipe, variant or None))
    export_s = time.perf_counter() - t0
    v = validator.validate(bundle, manifest) if validator is not None else {}
    row = {"case": case, "recipe": recipe_name, "variant": variant or None,
           "variant_description": VARIANTS[variant][0] if variant else None,
           "size_mb": manifest["size_mb"], "export_s": round(export_s, 2),
           **{k: v.get(k) for k in PARITY_KEYS},
           "tensor_types": manifest["target_info"]["tensor_types"],
           "target_info": {k: manifest["target_info"].get(k) for k in
                           ("quantizer", "copied_from_source", "grid_requantized", "source_blocks_kept", "imatrix")}}
    for t in threads:
        row[f"threads_{t}"] = latency(bundle, t, runs)
    print(json.dumps({k: row[k] for k in ("case", "size_mb", "kld_mean", "top1_agreement")}
                     | {f"decode_{t}": row[f"threads_{t}"]["decode_tok_s"] for t in threads}), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated RECIPE[:VARIANT]")
    add_model_arg(p)
    p.add_argument("--eval-tokens", type=int, default=0, help="eval tokens for parity (0 = the whole eval set)")
    p.add_argument("--threads", default="1,2", help='thread counts to time; "" = parity only')
    p.add_argument("--runs", type=int, default=3, help="latency runs per measurement (after one warm-up)")
    p.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference's latency")
    p.add_argument("--no-parity", action="store_true", help="export and time only (e.g. to re-time on a quiet machine)")
    p.add_argument("--bundles", type=Path, default=Path("bench-results/tmp/gguf"), help="where bundles are written")
    add_output_args(p)
    a = p.parse_args(argv)
    out_file = output_path(a, SCRIPT)
    for case in a.cases.split(","):
        recipe, _, variant = case.partition(":")
        if recipe not in ALL_RECIPES or (variant and variant not in VARIANTS):
            p.error(f"case {case!r}: RECIPE is one of {', '.join(ALL_RECIPES)}; VARIANT one of {', '.join(VARIANTS)}")

    from smolship.exporter import load_model
    from smolship.validation.parity import ParitySettings
    from smolship.validation.validate import ValidationSettings, Validator

    threads = [int(t) for t in a.threads.split(",") if t.strip()]
    source = load_model(a.model)
    settings = ValidationSettings(eval_tokens=a.eval_tokens or None, measure_latency=False, parity=ParitySettings())
    validator = None if a.no_parity else Validator(source, settings)
    report = envelope(SCRIPT, {"model": source.name, "source": source.source, "eval_tokens": a.eval_tokens or "all",
                               "threads": threads, "runs": a.runs, "cases": a.cases.split(","),
                               "latency": "128-token prompt, 128 new tokens, median of runs (smolship.validation.latency)"},
                      [], a.variant, reference=None)
    for case in a.cases.split(","):
        report["rows"].append(run_case(case, source, validator, a.bundles, threads, a.runs))
        write(out_file, report)  # keep what is done if a later case fails
    if not a.no_reference:  # last: the PyTorch reference is the slowest to time
        spec = f"reference:{a.model or ''}"
        report["reference"] = {f"threads_{t}": latency(spec, t, a.runs) for t in threads}
        print(json.dumps({"reference": report["reference"]}), flush=True)
    write(out_file, report)
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
