"""ExecuTorch target vs optimum-executorch, side by side, on the same weights and machine, in one run.

optimum-executorch (`optimum-cli export executorch --recipe xnnpack --qlinear 8da4w --qembedding 8w
--use_custom_sdpa --use_custom_kv_cache`) exports the source saved as a Hugging Face folder; smolship
exports its 8da4w recipe. Both programs then run in this process's executorch.runtime: kld_mean /
top-1 against the PyTorch reference on the eval set, and prefill / decode tok/s at each thread count,
interleaved (best of --repeats rounds) so load from elsewhere hits both alike. Export wall time and peak
RSS come from each exporting child process (os.wait4). Writes JSON with the ratios ours / optimum.

optimum-executorch pins transformers 5.0.0rc1 (smolship pins 4.57.6), so it runs from its own venv
that sees this environment's torch / executorch through a .pth file:

    python -m venv /tmp/oenv
    echo "$(python -c 'import site; print(site.getsitepackages()[0])')" > /tmp/oenv/lib/python3.11/site-packages/zz_main.pth
    /tmp/oenv/bin/pip install transformers==5.0.0rc1 "optimum~=2.0.0" accelerate
    /tmp/oenv/bin/pip install --no-deps optimum-executorch==1.1.0
    python -m benchmarks.executorch_anchor                        # bench-results/executorch_anchor.json
    python -m benchmarks.executorch_anchor --model offgrid:smollm2-135m --variant offgrid
    python -m benchmarks.executorch_anchor --model random:tiny --eval-tokens 64 --threads 1 --repeats 1 \
        --max-seq-len 256 --out /tmp/executorch_anchor.json          # a quick check
Without that interpreter (--optimum-python) the script stops before any work and says so.
Rows: one per program (name: optimum | ours); `ratios` ours / optimum.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (add_model_arg, add_output_args, envelope, named_rows, output_path, parity_of,
                               require_python, save_hf_folder, script_name, timed_child, write)
from smolship.exporter import load_model
from smolship.runner import Runner
from smolship.validation.latency import LatencySettings, measure_latency
from smolship.validation.validate import ValidationSettings, Validator

SCRIPT = script_name(__file__)
OPTIMUM_PYTHON = "/tmp/oenv/bin/python"


class OptimumPteRunner(Runner):
    """optimum-executorch's program: forward(input_ids[1, n], cache_position[n]) -> logits."""

    name = "optimum-executorch"

    def __init__(self, pte: Path, threads: int | None = None):
        from executorch.runtime import Runtime

        from smolship.targets.executorch.runner import load_kernel_libraries, set_threads

        load_kernel_libraries()
        set_threads(threads)
        self.program = Runtime.get().load_program(Path(pte))
        self.forward = self.program.load_method("forward")
        self.max_seq_len = int(self.program.load_method("get_max_seq_len").execute([])[0])
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0

    def _run(self, ids) -> np.ndarray:
        n = len(ids)
        out = self.forward.execute([torch.tensor([list(ids)], dtype=torch.int64),
                                    torch.arange(self.pos, self.pos + n, dtype=torch.int64)])[0]
        self.pos += n
        return out[0].numpy()

    def prefill(self, ids) -> np.ndarray:
        self.reset()
        logits = self._run(ids)
        if logits.shape[0] == len(ids):
            return logits
        # a program that returns only the last position: re-run token by token for per-position logits
        self.reset()
        return np.concatenate([self._run([t]) for t in ids], axis=0)

    def decode(self, token: int) -> np.ndarray:
        return self._run([int(token)])[-1]

    def close(self) -> None:
        self.forward = self.program = None


def run_child(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of an exporting child process; raises with its stderr tail on failure."""
    wall, rss, code, tail = timed_child(cmd)
    if code:
        raise RuntimeError(f"{cmd[0]} failed:\n{tail}")
    return wall, rss


def export_optimum(hf: Path, out: Path, python: str, max_seq_len: int) -> tuple[Path, dict]:
    cli = Path(python).parent / "optimum-cli"
    cmd = [str(cli), "export", "executorch", "--model", str(hf), "--task", "text-generation",
           "--recipe", "xnnpack", "--qlinear", "8da4w", "--qembedding", "8w", "--use_custom_sdpa",
           "--use_custom_kv_cache", "--max_seq_len", str(max_seq_len), "--output_dir", str(out)]
    wall, rss = run_child(cmd)
    return out / "model.pte", {"export_s": wall, "export_peak_rss_mb": rss, "command": " ".join(cmd[1:])}


def export_ours(model: str | None, out: Path, max_seq_len: int) -> tuple[Path, dict]:
    cmd = [sys.executable, "-m", "smolship.cli", "export", *([model] if model else []), "--target", "executorch",
           "--quant", "8da4w", "--out", str(out), "--no-validate", "--force", "--max-seq-len", str(max_seq_len)]
    wall, rss = run_child(cmd)
    return out / "executorch-8da4w", {"export_s": wall, "export_peak_rss_mb": rss, "command": "smolship " + " ".join(cmd[3:])}


def open_runner(name: str, path: Path, threads: int | None, max_seq_len: int) -> Runner:
    if name == "optimum":
        return OptimumPteRunner(path, threads)
    from smolship.targets.executorch.runner import ExecuTorchRunner

    return ExecuTorchRunner(path / "model.pte", max_seq_len, threads=threads)


PARITY_KEYS = ("kld_mean", "kld_p99", "top1_agreement", "max_abs_logit_diff", "greedy_match", "greedy_tokens",
               "eval_tokens")


def measure_programs(programs: dict[str, tuple[str, Path]], source, rows: dict[str, dict], eval_tokens: int,
                     threads: list[int], repeats: int, max_seq_len: int = 2048) -> None:
    """Into rows[name]: parity of each program (name -> (runner kind, path)) against the reference on
    2 threads, then prefill / decode tok/s at each thread count, interleaved across programs (best of
    `repeats` rounds of the median of 3 runs) so load from elsewhere hits them all alike."""
    validator = Validator(source, ValidationSettings(eval_tokens=eval_tokens, measure_latency=False))
    for name, (kind, path) in programs.items():
        rows[name].update(parity_of(open_runner(kind, path, 2, max_seq_len), validator, PARITY_KEYS))
        print(name, "parity", {k: rows[name][k] for k in ("kld_mean", "top1_agreement")}, flush=True)
        gc.collect()
    for t in threads:
        settings = LatencySettings(prompt_tokens=128, new_tokens=128, runs=3, threads=t)
        for _ in range(repeats):
            for name, (kind, path) in programs.items():
                runner = open_runner(kind, path, t, max_seq_len)
                r = measure_latency(runner, source.config.vocab_size, settings)
                runner.close()
                for k in ("prefill_tok_s", "decode_tok_s"):
                    rows[name][f"{k}@{t}"] = max(rows[name].get(f"{k}@{t}", 0.0), r[k])
        print("latency", t, {n: rows[n][f"decode_tok_s@{t}"] for n in programs}, flush=True)


def optimum_version(python: str) -> str:
    return subprocess.run([python, "-c", "from importlib.metadata import version; print(version('optimum-executorch'))"],
                          capture_output=True, text=True).stdout.strip() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimum-python", default=OPTIMUM_PYTHON,
                    help="interpreter of the environment that holds optimum-executorch (see --help's text)")
    add_model_arg(ap)
    ap.add_argument("--work", type=Path, default=Path("bench-results/tmp/executorch_anchor"))
    add_output_args(ap)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-seq-len", type=int, default=2048)
    args = ap.parse_args()
    out_file = output_path(args, SCRIPT)
    require_python(args.optimum_python, "import optimum.exporters.executorch, transformers, sys, pathlib; "
                   "sys.exit(0 if (pathlib.Path(sys.executable).parent / 'optimum-cli').is_file() else 'no optimum-cli')",
                   "optimum-executorch, the anchor this script compares against",
                   "optimum-executorch pins transformers 5.0.0rc1, which smolship's environment cannot hold: make its "
                   "own venv as `python -m benchmarks.executorch_anchor --help` shows and pass --optimum-python.")
    args.work.mkdir(parents=True, exist_ok=True)

    source = load_model(args.model)
    hf = save_hf_folder(source, args.work / "hf")
    rows: dict[str, dict] = {}
    paths: dict[str, Path] = {}
    paths["optimum"], rows["optimum"] = export_optimum(hf, args.work / "optimum", args.optimum_python, args.max_seq_len)
    print("optimum exported", rows["optimum"], flush=True)
    paths["ours"], rows["ours"] = export_ours(args.model, args.work / "ours", args.max_seq_len)
    print("ours exported", rows["ours"], flush=True)
    for name, p in paths.items():
        files = [p] if p.is_file() else list(p.glob("*.pte"))
        rows[name]["size_mb"] = round(sum(f.stat().st_size for f in files) / 1e6, 2)

    measure_programs({name: (name, p) for name, p in paths.items()}, source, rows, args.eval_tokens,
                     args.threads, args.repeats, args.max_seq_len)

    o, b = rows["ours"], rows["optimum"]
    ratios = {"kld_mean": round(o["kld_mean"] / b["kld_mean"], 4), "size": round(o["size_mb"] / b["size_mb"], 3),
              "export_s": round(o["export_s"] / b["export_s"], 3),
              **{f"decode@{t}": round(o[f"decode_tok_s@{t}"] / b[f"decode_tok_s@{t}"], 3) for t in args.threads}}
    import executorch  # noqa: F401
    from importlib.metadata import version

    report = envelope(SCRIPT, {"model": source.name, "eval_tokens": args.eval_tokens, "threads": args.threads,
                               "max_seq_len": args.max_seq_len,
                               "latency": "128-token prompt, 128 new tokens, best of repeats of the median of 3 runs"},
                      named_rows(rows), args.variant,
                      anchor_versions={"optimum-executorch": optimum_version(args.optimum_python),
                                       "executorch": version("executorch")},
                      ratios={"ours/optimum": ratios})
    write(out_file, report)
    print(json.dumps(ratios), f"wrote {out_file}", flush=True)


if __name__ == "__main__":
    main()
