"""Latency of a Runner: prefill tok/s (128-token prompt), decode tok/s (128 new tokens), time to first
token; median over several runs after one warm-up. Peak RSS comes from a fresh worker process
(`python -m smolship.validation.bench_worker`) so one bundle's memory never leaks into another's.

A figure measured on a busy machine is marked, not published as fact: each measurement records the
spread of its timed runs and how much of the machine other processes used meanwhile, and
`reliability()` flags it (rule and the figures behind it: `SPREAD_LIMIT`, `OTHERS_LIMIT`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from smolship.errors import SmolshipError
from smolship.process_stats import peak_rss_mb
from smolship.runner import Runner


# A latency figure is unreliable when its timed decode runs differ by more than SPREAD_LIMIT of their
# median, or other processes used more than OTHERS_LIMIT of the machine's CPU while it ran.
SPREAD_LIMIT = 0.10
OTHERS_LIMIT = 0.25
# The figures that load distorts (memory and size do not move with it), and the mark every table, plot, model
# card and gate message puts on one of them when reliability() flagged it: never shown as a plain number.
SPEED_KEYS = ("prefill_tok_s", "decode_tok_s", "ttft_ms")
UNRELIABLE = "(unreliable)"


def unreliable(row: dict, key: str | None = None) -> bool:
    """Whether `row` (a validation result or report row) holds a flagged latency figure (`key`: that one)."""
    return row.get("latency_reliable") is False and (key is None or key in SPEED_KEYS)


@dataclass(frozen=True)
class LatencySettings:
    prompt_tokens: int = 128
    new_tokens: int = 128
    runs: int = 3
    threads: int | None = None
    full_context: bool = False  # also fill the cache to max_seq_len and record that peak RSS (measure_full_context)


def bench_prompt(vocab_size: int, n: int, seed: int = 0) -> list[int]:
    # Fixed pseudo-random ids: cost depends on length, not content.
    return [int(x) for x in np.random.default_rng(seed).integers(100, min(vocab_size, 40000), size=n)]


def measure_latency(runner: Runner, vocab_size: int, settings: LatencySettings = LatencySettings()) -> dict:
    # a short cache (--max-seq-len 128) shrinks the prompt to half of it, so decode still gets tokens to time
    prompt = bench_prompt(vocab_size, min(settings.prompt_tokens, max(1, (runner.max_seq_len - 1) // 2)))
    new = max(1, min(settings.new_tokens, runner.max_seq_len - len(prompt) - 1))
    prefill_s, ttft_s, decode_s = [], [], []
    load = MachineLoad()
    for run in range(settings.runs + 1):  # run 0 warms up caches and kernels
        if run == 1:
            load.start()
        t0 = time.perf_counter()
        logits = runner.prefill(prompt)
        tok = int(np.argmax(logits[-1]))
        t1 = time.perf_counter()
        for _ in range(new):
            tok = int(np.argmax(runner.decode(tok)))
        t2 = time.perf_counter()
        if run:
            prefill_s.append(t1 - t0)
            ttft_s.append(t1 - t0)
            decode_s.append(t2 - t1)
    med = statistics.median
    others = load.stop()
    return {
        "prefill_tok_s": round(len(prompt) / med(prefill_s), 2),
        "decode_tok_s": round(new / med(decode_s), 2),
        "ttft_ms": round(1000 * med(ttft_s), 2),
        "runs": settings.runs,
        "prompt_tokens": len(prompt),
        "new_tokens": new,
        "peak_rss_mb": peak_rss_mb(),
        **reliability(decode_s, prefill_s, others),
    }


def measure_full_context(runner: Runner, vocab_size: int, prompt_tokens: int = 128) -> dict:
    """Peak RSS with the KV cache full (issue 29): a prompt, then one decode per position up to max_seq_len,
    as a chat that reaches the end of its context does. Run after `measure_latency` in the same fresh worker,
    so `full_context_peak_rss_mb` is this process's peak over both (the full cache is the larger); decoding,
    not one long prefill, fills the cache, so the figure is not inflated by a prompt's (n, vocab) logits."""
    n = runner.max_seq_len
    before = peak_rss_mb()  # VmHWM is updated lazily by the kernel: the figure never reads below the earlier peak
    prompt = bench_prompt(vocab_size, max(1, min(prompt_tokens, n - 1)), seed=1)
    t0 = time.perf_counter()
    runner.prefill(prompt)
    for tok in bench_prompt(vocab_size, n - len(prompt), seed=2):  # fixed ids: cost depends on length only
        runner.decode(tok)
    return {"full_context_positions": n, "full_context_peak_rss_mb": max(before, peak_rss_mb()),
            "full_context_seconds": round(time.perf_counter() - t0, 1)}


def spread(times: list[float]) -> float:
    """(slowest - fastest) / median of the timed runs: 0 for one run."""
    return (max(times) - min(times)) / statistics.median(times) if len(times) > 1 else 0.0


def reliability(decode_s: list[float], prefill_s: list[float], others_cpu: float | None) -> dict:
    """The noise figures of one measurement and whether its tok/s can be trusted (rule: module constants)."""
    sd, sp = spread(decode_s), spread(prefill_s)
    reasons = []
    if sd > SPREAD_LIMIT:
        reasons.append(f"decode runs differ by {sd:.0%} (limit {SPREAD_LIMIT:.0%})")
    if sp > 2 * SPREAD_LIMIT:  # prefill runs are short (one call): allow twice the spread
        reasons.append(f"prefill runs differ by {sp:.0%} (limit {2 * SPREAD_LIMIT:.0%})")
    if others_cpu is not None and others_cpu > OTHERS_LIMIT:
        reasons.append(f"other processes used {others_cpu:.0%} of the CPU (limit {OTHERS_LIMIT:.0%})")
    return {"decode_spread": round(sd, 3), "prefill_spread": round(sp, 3),
            "others_cpu": None if others_cpu is None else round(others_cpu, 3),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "latency_reliable": not reasons,
            "latency_note": "; ".join(reasons) or None}


class MachineLoad:
    """Share of the machine's CPU time that other processes used between start() and stop()."""

    def start(self) -> None:
        import psutil

        self.wall, self.total, self.own = time.monotonic(), psutil.cpu_times(), psutil.Process().cpu_times()

    def stop(self) -> float | None:
        import psutil

        if not hasattr(self, "wall"):
            return None
        wall = time.monotonic() - self.wall
        total, own = psutil.cpu_times(), psutil.Process().cpu_times()
        busy = lambda t: t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)  # noqa: E731
        others = (busy(total) - busy(self.total)) - ((own.user + own.system) - (self.own.user + self.own.system))
        capacity = wall * (psutil.cpu_count() or 1)
        return max(0.0, min(1.0, others / capacity)) if capacity > 0 else None


def thread_env(threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env


def latency_in_worker(what: str, settings: LatencySettings = LatencySettings(), timeout: int = 1800) -> dict:
    """Run measure_latency in a fresh process; `what` is a bundle path or 'reference:<model spec>'."""
    cmd = [sys.executable, "-m", "smolship.validation.bench_worker", str(what),
           "--runs", str(settings.runs), "--prompt-tokens", str(settings.prompt_tokens),
           "--new-tokens", str(settings.new_tokens)]
    if settings.threads:
        cmd += ["--threads", str(settings.threads)]
    if settings.full_context:
        cmd += ["--full-context"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(settings.threads), timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise SmolshipError(f"The latency worker failed for '{what}':\n{tail}",
                            "Run `smolship validate` on the bundle to see whether the artifact loads.")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["threads"] = settings.threads or os.cpu_count()
    return result
