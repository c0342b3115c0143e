"""Scale benchmark: export random 360M and 1.7B configs to every target, one process per export,
recording wall time and peak memory (max RSS of the child). Writes JSON.

    python -m benchmarks.scale [--models random:smollm2-1.7b] [--targets gguf onnx]    # bench-results/scale.json
    python -m benchmarks.scale --models random:smollm2-1.7b --cases onnx:fp32 coreml:fp16   # other recipes
    python -m benchmarks.scale --models random:tiny --targets gguf --eval-tokens 64 --out /tmp/scale.json  # quick check
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.common import add_output_args, envelope, output_path, script_name, timed_child, write

SCRIPT = script_name(__file__)

DEFAULT_RECIPES = {"gguf": "q8_0", "onnx": "int4", "executorch": "8da4w", "coreml": "w4"}


def run_one(model: str, target: str, recipe: str, eval_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "smolship.cli", "export", model, "--target", target, "--quant", recipe,
               "--out", tmp, "--eval-tokens", str(eval_tokens), "--json", "--max-seq-len", "512"]
        with tempfile.TemporaryFile("w+") as out:
            wall, rss, code, stderr = timed_child(cmd, stdout=out)  # rusage of this one child: its own peak RSS
            out.seek(0)
            stdout = out.read()
        row = {"model": model, "target": target, "recipe": recipe, "seconds": wall,  # export + validation
               "peak_rss_mb": rss, "ok": code == 0}
        for m in Path(tmp).glob("*/manifest.json"):  # read before the folder goes
            row["export_s"] = json.loads(m.read_text()).get("export_seconds")
        if code == 0:
            report = json.loads(stdout)
            if report.get("rows"):
                r = report["rows"][0]
                row.update({k: r.get(k) for k in ("size_mb", "kld_mean", "top1_agreement", "decode_tok_s")})
        else:
            row["error"] = stderr.strip().splitlines()[-3:]
        return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["random:smollm2-360m", "random:smollm2-1.7b"])
    p.add_argument("--targets", nargs="*", default=list(DEFAULT_RECIPES))
    p.add_argument("--cases", nargs="*", default=[], help="extra TARGET:RECIPE exports per model (e.g. onnx:fp32)")
    p.add_argument("--eval-tokens", type=int, default=256)
    add_output_args(p)
    a = p.parse_args()
    out_file = output_path(a, SCRIPT)
    if bad := [t for t in a.targets if t not in DEFAULT_RECIPES] + [c for c in a.cases if ":" not in c]:
        p.error(f"unknown target or case not TARGET:RECIPE: {', '.join(bad)}")
    rows = []
    for model in a.models:
        cases = [(t, DEFAULT_RECIPES[t]) for t in a.targets] + [tuple(c.split(":", 1)) for c in a.cases]
        for target, recipe in cases:
            rows.append(run_one(model, target, recipe, a.eval_tokens))
            print(json.dumps(rows[-1]), flush=True)
            write(out_file, envelope(SCRIPT, {"models": a.models, "targets": a.targets, "cases": a.cases,
                                              "eval_tokens": a.eval_tokens, "max_seq_len": 512},
                                     rows, a.variant))  # partial results survive
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
