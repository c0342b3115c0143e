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
    python benchmarks/executorch_anchor.py --optimum-python /tmp/oenv/bin/python --out bench-results/executorch_anchor.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from envelope import envelope, write  # benchmarks/envelope.py: the one result format

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from onnx_anchor import save_hf_folder  # noqa: E402  (same HF folder writer as the ONNX anchor)

from smolship.exporter import load_model  # noqa: E402
from smolship.runner import Runner  # noqa: E402
from smolship.validation.latency import LatencySettings, measure_latency  # noqa: E402
from smolship.validation.parity import measure_parity  # noqa: E402
from smolship.validation.validate import ValidationSettings, Validator  # noqa: E402


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


def timed_child(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB of the child, stderr tail); raises on failure."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        tail = "\n".join(err.read().strip().splitlines()[-15:])
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{cmd[0]} failed:\n{tail}")
    return round(time.perf_counter() - t0, 1), round(usage.ru_maxrss / 1024, 1), tail


def export_optimum(hf: Path, out: Path, python: str, max_seq_len: int) -> tuple[Path, dict]:
    cli = Path(python).parent / "optimum-cli"
    cmd = [str(cli), "export", "executorch", "--model", str(hf), "--task", "text-generation",
           "--recipe", "xnnpack", "--qlinear", "8da4w", "--qembedding", "8w", "--use_custom_sdpa",
           "--use_custom_kv_cache", "--max_seq_len", str(max_seq_len), "--output_dir", str(out)]
    wall, rss, _ = timed_child(cmd)
    return out / "model.pte", {"export_s": wall, "export_peak_rss_mb": rss, "command": " ".join(cmd[1:])}


def export_ours(model: str | None, out: Path, max_seq_len: int) -> tuple[Path, dict]:
    cmd = [sys.executable, "-m", "smolship.cli", "export", *([model] if model else []), "--target", "executorch",
           "--quant", "8da4w", "--out", str(out), "--no-validate", "--force", "--max-seq-len", str(max_seq_len)]
    wall, rss, _ = timed_child(cmd)
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
        runner = open_runner(kind, path, 2, max_seq_len)
        v = measure_parity(runner, validator.reference, validator.docs, validator.settings.parity)
        runner.close()
        rows[name].update({k: v[k] for k in PARITY_KEYS})
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimum-python", default="/tmp/oenv/bin/python")
    ap.add_argument("--model", default=None, help="model spec (default: the real SmolLM2-135M-Instruct)")
    ap.add_argument("--work", type=Path, default=Path("bench-results/tmp/executorch_anchor"))
    ap.add_argument("--out", type=Path, default=Path("bench-results/executorch_anchor.json"))
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-seq-len", type=int, default=2048)
    args = ap.parse_args()
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

    report = envelope("executorch_anchor",
                      {"model": source.name, "eval_tokens": args.eval_tokens, "threads": args.threads,
                       "max_seq_len": args.max_seq_len,
                       "latency": "128-token prompt, 128 new tokens, best of repeats of the median of 3 runs"},
                      rows, anchor_versions={"optimum-executorch": "1.1.0", "executorch": version("executorch")},
                      **{"ratios ours/optimum": ratios})
    write(args.out, report)
    print(json.dumps(report["ratios ours/optimum"]), f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
