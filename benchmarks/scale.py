"""Scale benchmark: export random 360M and 1.7B configs to every target, one process per export,
recording wall time and peak memory (max RSS of the child). Writes JSON.

    python benchmarks/scale.py --out bench-results/scale.json [--models random:smollm2-1.7b] [--targets gguf onnx]
    python benchmarks/scale.py --models random:smollm2-1.7b --cases onnx:fp32 coreml:fp16   # other recipes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from envelope import envelope, write  # benchmarks/envelope.py: the one result format

DEFAULT_RECIPES = {"gguf": "q8_0", "onnx": "int4", "executorch": "8da4w", "coreml": "w4"}


def run_one(model: str, target: str, recipe: str, eval_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "smolship.cli", "export", model, "--target", target, "--quant", recipe,
               "--out", tmp, "--eval-tokens", str(eval_tokens), "--json", "--max-seq-len", "512"]
        t0 = time.perf_counter()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
            _, status, usage = os.wait4(proc.pid, 0)  # rusage of this one child: its own peak RSS
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0), err.seek(0)
            stdout, stderr = out.read(), err.read()
        wall = time.perf_counter() - t0
        row = {"model": model, "target": target, "recipe": recipe, "seconds": round(wall, 1),  # export + validation
               "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "ok": proc.returncode == 0}
        for m in Path(tmp).glob("*/manifest.json"):  # read before the folder goes
            row["export_s"] = json.loads(m.read_text()).get("export_seconds")
        if proc.returncode == 0:
            report = json.loads(stdout)
            if report.get("rows"):
                r = report["rows"][0]
                row.update({k: r.get(k) for k in ("size_mb", "kld_mean", "top1_agreement", "decode_tok_s")})
        else:
            row["error"] = stderr.strip().splitlines()[-3:]
        return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["random:smollm2-360m", "random:smollm2-1.7b"])
    p.add_argument("--targets", nargs="*", default=list(DEFAULT_RECIPES))
    p.add_argument("--cases", nargs="*", default=[], help="extra TARGET:RECIPE exports per model (e.g. onnx:fp32)")
    p.add_argument("--eval-tokens", type=int, default=256)
    p.add_argument("--out", type=Path, default=Path("bench-results/scale.json"))
    a = p.parse_args()
    rows = []
    for model in a.models:
        cases = [(t, DEFAULT_RECIPES[t]) for t in a.targets] + [tuple(c.split(":", 1)) for c in a.cases]
        for target, recipe in cases:
            rows.append(run_one(model, target, recipe, a.eval_tokens))
            print(json.dumps(rows[-1]), flush=True)
            write(a.out, envelope("scale", {"models": a.models, "targets": a.targets, "cases": a.cases,
                                            "eval_tokens": a.eval_tokens}, rows))  # partial results survive


if __name__ == "__main__":
    main()
