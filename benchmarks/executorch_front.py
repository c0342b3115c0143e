"""ExecuTorch size / accuracy / speed front: export recipe variants, measure each in executorch.runtime.

Each variant is a recipe plus ExportOptions.extra knobs (see targets/executorch/target.py). Every
program is measured the same way in this one process (executorch_anchor.measure_programs): kld_mean /
top-1 against the PyTorch reference on the eval set (2 threads), then prefill / decode tok/s on 1 and
2 threads, interleaved across variants (best of --repeats rounds) so load from elsewhere hits all
alike. `--baseline PTE` adds an existing program (e.g. optimum-executorch's, from
benchmarks/executorch_anchor.py) to the same runs.

    python benchmarks/executorch_front.py --variants default head-8da4w sym-layers \
        --baseline bench-results/tmp/executorch_anchor/optimum/model.pte --out bench-results/executorch_front.json
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

from envelope import envelope, write  # benchmarks/envelope.py: the one result format

sys.path.insert(0, str(Path(__file__).parent))
from executorch_anchor import measure_programs  # noqa: E402

from smolship.export import export_bundle  # noqa: E402
from smolship.exporter import load_model  # noqa: E402
from smolship.targets import ExportOptions, get_target  # noqa: E402

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
    ap.add_argument("--model", default=None, help="model spec (default: the real SmolLM2-135M-Instruct)")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--baseline", type=Path, default=None, help="an optimum-executorch model.pte to measure alongside")
    ap.add_argument("--also", nargs="*", default=[], metavar="NAME=BUNDLE",
                    help="smolship ExecuTorch bundles exported earlier (e.g. before a change) to measure alongside")
    ap.add_argument("--work", type=Path, default=Path("bench-results/tmp/executorch_front"))
    ap.add_argument("--out", type=Path, default=Path("bench-results/executorch_front.json"))
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

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
    report = envelope("executorch_front", {"model": source.name, "eval_tokens": args.eval_tokens, "threads": args.threads,
                                           "latency": "128-token prompt, 128 new tokens, best of repeats of the median of 3 runs"},
                      rows)
    write(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
