"""ExecuTorch size / accuracy / speed front: export recipe variants, measure each in executorch.runtime.

Each variant is a recipe plus ExportOptions.extra knobs (see targets/executorch/target.py). Every
program is measured the same way in this one process (executorch_anchor.measure_programs): kld_mean /
top-1 against the PyTorch reference on the eval set (2 threads), then prefill / decode tok/s on 1 and
2 threads, interleaved across variants (best of --repeats rounds) so load from elsewhere hits all
alike. `--baseline PTE` adds an existing program (e.g. optimum-executorch's, from
benchmarks/executorch_anchor.py) to the same runs; `--also NAME=BUNDLE` earlier smolship bundles.
Rows: one per program (name), with `decode_ratio_vs_optimum` when a baseline ran.

    python -m benchmarks.executorch_front --variants default head-8da4w sym-layers \
        --baseline bench-results/tmp/executorch_anchor/optimum/model.pte     # bench-results/executorch_front.json
    python -m benchmarks.executorch_front --variants default head-8da8w --also before=OLD_BUNDLE --variant head
    python -m benchmarks.executorch_front --model random:tiny --variants default --eval-tokens 64 --threads 1 \
        --repeats 1 --out /tmp/executorch_front.json                          # a quick check
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from benchmarks.common import (add_model_arg, add_output_args, check_export_options, envelope, named_rows,
                               output_path, script_name, write)
from benchmarks.executorch_anchor import measure_programs
from smolship.export import export_bundle
from smolship.exporter import load_model
from smolship.targets import ExportOptions, get_target

SCRIPT = script_name(__file__)

# name -> (recipe, extra knobs)
VARIANTS = {
    "fp32": ("fp32", {}),
    "default": ("8da4w", {}),
    "head-w8-rtn": ("8da4w", {"lm_head": "w8-rtn"}),
    "head-8da8w": ("8da4w", {"lm_head": "8da8w"}),
    "head-8da8w-rtn": ("8da4w", {"lm_head": "8da8w-rtn"}),
    "head-w8": ("8da4w", {"lm_head": "w8"}),
    "head-8da4w": ("8da4w", {"lm_head": "8da4w"}),
    "sym-layers": ("8da4w", {"rules": [[r"layers\..*", "8da4w-sym"]]}),
    "sym-qk": ("8da4w", {"rules": [[r"layers\..*\.(q_proj|k_proj)", "8da4w-sym"]]}),
    "emb8": ("8da4w", {"embedding_bits": 8}),
    "group64": ("8da4w", {"group_size": 64}),
    "8da8w": ("8da8w", {}),
    "int8": ("int8", {}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arg(ap)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--baseline", type=Path, default=None, help="an optimum-executorch model.pte to measure alongside")
    ap.add_argument("--also", nargs="*", default=[], metavar="NAME=BUNDLE",
                    help="smolship ExecuTorch bundles exported earlier (e.g. before a change) to measure alongside")
    ap.add_argument("--work", type=Path, default=Path("bench-results/tmp/executorch_front"))
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    add_output_args(ap)
    args = ap.parse_args()
    out_file = output_path(args, SCRIPT)
    check_export_options("executorch", [VARIANTS[name][1] for name in args.variants], "--variants")

    source = load_model(args.model)
    target = get_target("executorch")
    rows: dict[str, dict] = {}
    paths: dict[str, tuple[str, Path]] = {}
    if args.baseline:
        paths["optimum-executorch"] = ("optimum", args.baseline)
        rows["optimum-executorch"] = {"size_mb": round(args.baseline.stat().st_size / 1e6, 2)}
    for spec in args.also:
        name, _, path = spec.partition("=")
        paths[name] = ("ours", Path(path))
        rows[name] = {"size_mb": round((Path(path) / "model.pte").stat().st_size / 1e6, 2), "bundle": path}
    for name in args.variants:
        recipe, extra = VARIANTS[name]
        t0 = time.perf_counter()
        bundle, manifest = export_bundle(source, "executorch", target.recipes[recipe], args.work / name,
                                         ExportOptions(extra=extra), validator=None, force=True)
        info = manifest["target_info"]
        rows[name] = {"recipe": recipe, "extra": extra, "export_s": round(time.perf_counter() - t0, 1),
                      "export_seconds": info["export_seconds"],
                      "size_mb": round((bundle / "model.pte").stat().st_size / 1e6, 2),
                      "delegation": {k: info["delegation"][k] for k in ("xnnpack_delegates", "xnnpack_ops",
                                                                         "non_delegated_ops")}}
        paths[name] = ("ours", bundle)
        print(name, rows[name], flush=True)
        gc.collect()

    measure_programs(paths, source, rows, args.eval_tokens, args.threads, args.repeats)

    if args.baseline:
        base = rows["optimum-executorch"]
        for name, row in rows.items():
            row["decode_ratio_vs_optimum"] = {t: round(row[f"decode_tok_s@{t}"] / base[f"decode_tok_s@{t}"], 3)
                                              for t in args.threads}
    report = envelope(SCRIPT, {"model": source.name, "eval_tokens": args.eval_tokens, "threads": args.threads,
                               "variants": args.variants, "baseline": str(args.baseline) if args.baseline else None,
                               "also": args.also,
                               "latency": "128-token prompt, 128 new tokens, best of repeats of the median of 3 runs"},
                      named_rows(rows), args.variant)
    write(out_file, report)
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
