"""Numeric options and memory, checked before any work starts: each refusal names the limit and why.

An option out of range used to fail late and misleadingly (`--max-seq-len 0` ended in a llama.cpp load
error) or not at all (`--max-seq-len 100000000` asks ExecuTorch and Core ML for a KV cache of
terabytes). The export's memory need is estimated from the model's size, measured peaks (below) and the
KV cache, and compared with what the machine has free (psutil) before a minute of work is spent.

Peak memory of export + validation, random 1.7B (6.84 GB of fp32 weights, --max-seq-len 2048), from
DESIGN.md / README: Core ML w4 17.1 GB (2.50x), ONNX int4 17.3 GB (2.53x), ExecuTorch 8da4w 14.5 GB
(2.12x). The estimate is WEIGHT_FACTOR x the fp32 weights (GGUF, unmeasured at 1.7B, takes the highest)
plus the fp32 KV cache plus 0.5 GB of runtime: 18.8 GB for ONNX at 1.7B, 8% above its measured peak.
`SMOLSHIP_SKIP_MEMORY_CHECK=1` turns the memory refusal into a warning. The same estimate sizes `--jobs auto`
(`auto_jobs`): as many target processes at once as there are cores and free memory for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from smolship.errors import SmolshipError
from smolship.exporter.config import PRESETS, LlamaConfig

DEFAULT_MAX_SEQ_LEN = 2048  # export's --max-seq-len default
WEIGHT_FACTOR = {"coreml": 2.5, "onnx": 2.55, "executorch": 2.15, "gguf": 2.55}  # peak / fp32 weights (above)
RUNTIME_BYTES = 500 * 10**6  # torch, converters and runtimes loaded in one process
GB = 1e9


def _bad(option: str, value, limit: str, fix: str) -> SmolshipError:
    return SmolshipError(f"{option} {value} is out of range: {limit}.", fix)


def check_int(option: str, value, lo: int, hi: int | None = None, why: str = "") -> None:
    """lo <= value <= hi (hi None = no upper bound), else a SmolshipError naming the range."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f"it must be between {lo} and {hi}" if hi is not None else f"it must be at least {lo}"
        raise _bad(option, value, rng + (f" ({why})" if why else ""), f"Pass {option} within that range.")


def check_float(option: str, value, lo: float, hi: float | None = None, lo_open: bool = False) -> None:
    if value is None:
        return
    if value != value or value < lo or (lo_open and value == lo) or (hi is not None and value > hi):
        low = f"above {lo}" if lo_open else f"at least {lo}"
        raise _bad(option, value, f"it must be {low}" + (f" and at most {hi}" if hi is not None else ""),
                   f"Pass {option} within that range.")


def check_threads(threads) -> None:
    cores = os.cpu_count() or 1
    for t in threads if isinstance(threads, (list, tuple)) else [threads]:
        check_int("--threads", t, 1, cores, f"this machine has {cores} cores")


def peek_config(spec) -> LlamaConfig | None:
    """The model's config read cheaply (header / config.json only), or None when that is not possible
    without the full load (hub ids) or the source is broken (the real load then says why)."""
    try:
        text = "" if spec is None else str(spec)
        if text in ("", "default"):
            from smolship.exporter.sources import default_model_path

            return _gguf_config(default_model_path())
        if text.startswith("random:"):
            return PRESETS.get(text.removeprefix("random:"))
        path = Path(text).expanduser()
        if path.is_dir():
            return LlamaConfig.from_hf(json.loads((path / "config.json").read_text()))
        if path.is_file():
            with open(path, "rb") as f:
                if f.read(4) == b"GGUF":
                    return _gguf_config(path)
            if (path.parent / "config.json").is_file():
                return LlamaConfig.from_hf(json.loads((path.parent / "config.json").read_text()))
    except Exception:  # noqa: BLE001 - the real load reports a broken source clearly
        return None
    return None


def _gguf_config(path: Path) -> LlamaConfig:
    from smolship.exporter.gguf_source import peek_config

    return peek_config(path)


def kv_cache_bytes(cfg: LlamaConfig, max_seq_len: int, bytes_per_value: int = 4) -> int:
    """K and V buffers [1, n_kv, max_seq_len, head_dim] per layer, as ExecuTorch and Core ML allocate them."""
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * max_seq_len * bytes_per_value


def kv_cache_text(cfg: LlamaConfig, max_seq_len: int | None = None) -> str:
    """What the fp32 KV cache costs at `max_seq_len` (default: export's default, lowered to the model's limit
    as check_max_seq_len does) and at the model's own limit, for `smolship inspect` and the README table."""
    def size(n: int) -> str:
        return f"{n / GB:.2f} GB" if n >= GB else f"{n / 1e6:.1f} MB"

    limit = cfg.max_position_embeddings
    at = max_seq_len or min(DEFAULT_MAX_SEQ_LEN, limit)
    text = f"{size(kv_cache_bytes(cfg, at))} at {at} positions"
    if max_seq_len is None:
        text += " (export's default --max-seq-len" + (", lowered to the model's limit)" if at == limit else ")")
    if at != limit:
        text += f", {size(kv_cache_bytes(cfg, limit))} at the model's {limit}"
    return text + f"; {kv_cache_bytes(cfg, 1) / 1e3:.1f} KB a position (fp32, K and V)"


def export_memory_bytes(cfg: LlamaConfig, max_seq_len: int, targets: list[str] = ("onnx",), parallel: int = 1) -> int:
    """Estimated peak of exporting + validating `targets` (see the module docstring): one at a time, the
    hungriest target's peak; with `parallel` worker processes, the sum of the hungriest `parallel`."""
    peaks = sorted((WEIGHT_FACTOR.get(t, max(WEIGHT_FACTOR.values())) * 4 * cfg.n_params
                    + kv_cache_bytes(cfg, max_seq_len) + RUNTIME_BYTES for t in targets), reverse=True)
    return int(sum(peaks[:max(1, parallel)]))


def available_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check_max_seq_len(value: int, cfg: LlamaConfig | None, default: int = DEFAULT_MAX_SEQ_LEN) -> tuple[int, str]:
    """(effective max_seq_len, note). The default is lowered to a smaller model's limit (with a note);
    an explicit value beyond the model's positions is refused."""
    check_int("--max-seq-len", value, 1, None, "the KV cache needs at least one position")
    if cfg is None:
        return value, ""
    limit = cfg.max_position_embeddings
    if value > limit:
        if value == default:
            return limit, f"--max-seq-len lowered from the default {default} to this model's {limit} positions."
        raise _bad("--max-seq-len", value,
                   f"this model was trained for {limit} positions (max_position_embeddings); its KV cache at "
                   f"{value} positions would take {kv_cache_bytes(cfg, value) / GB:,.1f} GB in fp32",
                   f"Pass --max-seq-len between 1 and {limit}.")
    return value, ""


def check_memory(cfg: LlamaConfig, max_seq_len: int, targets: list[str] = ("onnx",), parallel: int = 1,
                 available: int | None = None) -> str:
    """Refuse an export the machine cannot hold; returns a warning text when the check was skipped."""
    need = export_memory_bytes(cfg, max_seq_len, targets, parallel)
    free = available_memory_bytes() if available is None else available
    if need <= free:
        return ""
    detail = (f"exporting this {cfg.n_params / 1e9:.2f}B-parameter model to {', '.join(targets)} needs about "
              f"{need / GB:.1f} GB (up to {max(WEIGHT_FACTOR.get(t, 2.55) for t in targets)}x its "
              f"{4 * cfg.n_params / GB:.1f} GB of fp32 weights"
              + (f", {parallel} parallel jobs" if parallel > 1 else "")
              + f", KV cache {kv_cache_bytes(cfg, max_seq_len) / GB:.2f} GB at {max_seq_len} positions), "
              f"but only {free / GB:.1f} GB of memory is available")
    if os.environ.get("SMOLSHIP_SKIP_MEMORY_CHECK", "") not in ("", "0"):
        return f"Memory check skipped (SMOLSHIP_SKIP_MEMORY_CHECK): {detail}."
    raise SmolshipError(f"Not enough memory: {detail}.",
                        "Close other programs, use --jobs 1, lower --max-seq-len, or run on a larger machine "
                        "(SMOLSHIP_SKIP_MEMORY_CHECK=1 tries anyway).")


def parse_jobs(value) -> int | str:
    """--jobs: a count of at least 1, or "auto"."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        jobs = int(str(value))
    except ValueError:
        raise SmolshipError(f"--jobs '{value}' is neither a number nor 'auto'.",
                            "Pass --jobs auto (as many as the cores and free memory hold) or a count such as --jobs 2.") from None
    check_int("--jobs", jobs, 1, None, "one process per bundle")
    return jobs


def auto_jobs(cfg: LlamaConfig | None, max_seq_len: int, targets: list[str], cores: int | None = None,
              available: int | None = None) -> tuple[int, str]:
    """--jobs auto: the most target processes the cores and the free memory hold at once (memory summed over
    the hungriest targets, as check_memory does); (count, a note saying why)."""
    cores = cores or os.cpu_count() or 1
    if cfg is None:
        return 1, "--jobs auto: 1 (this model's size is not known before it loads, so its memory cannot be estimated)"
    free = available_memory_bytes() if available is None else available
    jobs = 1
    for k in range(2, min(cores, len(targets)) + 1):
        if export_memory_bytes(cfg, max_seq_len, targets, k) <= free:
            jobs = k
    per_job = export_memory_bytes(cfg, max_seq_len, targets, 1)
    return jobs, (f"--jobs auto: {jobs} export process{'es' if jobs > 1 else ''} at once ({cores} cores, "
                  f"{free / GB:.1f} GB free, up to {per_job / GB:.1f} GB per process)")


def check_export(model, targets: list[str], max_seq_len: int, eval_tokens, threads, jobs: int | str,
                 max_kld, validate: bool) -> tuple[int, list[str], int]:
    """Every numeric option of `smolship export`; returns (effective max_seq_len, notes for the user, the
    number of target processes to run at once: `jobs`, or what auto_jobs picks for "auto")."""
    check_int("--eval-tokens", eval_tokens, 0, None, "0 means the whole eval set")
    check_threads(threads)
    jobs = parse_jobs(jobs)
    check_float("--max-kld", max_kld, 0.0, lo_open=True)
    cfg = peek_config(model)
    max_seq_len, note = check_max_seq_len(max_seq_len, cfg)
    notes = [note] if note else []
    if jobs == "auto":
        jobs, note = auto_jobs(cfg, max_seq_len, targets)
        notes += [note] if len(targets) > 1 else []
    if cfg is not None:
        warning = check_memory(cfg, max_seq_len, targets, min(jobs, len(targets)))
        notes += [warning] if warning else []
    return max_seq_len, notes, jobs


def check_validate(eval_tokens, threads, max_kld, min_top1, min_decode_tok_s, eval_file=None, max_late_kld=None) -> None:
    check_int("--eval-tokens", eval_tokens, 0, None, "0 means the whole eval set")
    check_threads(threads)
    check_float("--max-kld", max_kld, 0.0)
    check_float("--min-top1", min_top1, 0.0, 1.0)
    check_float("--min-decode-tok-s", min_decode_tok_s, 0.0)
    check_float("--max-late-kld", max_late_kld, 0.0)
    if eval_file is not None and not Path(eval_file).is_file():
        raise SmolshipError(f"--eval-file '{eval_file}' does not exist.", "Pass an existing text or .jsonl file.")


def check_bench(runs, threads) -> None:
    check_int("--runs", runs, 1, 1000, "the median needs at least one timed run")
    check_threads(list(threads))


def check_chat(max_new_tokens, temperature, top_p, threads) -> None:
    check_int("--max-new-tokens", max_new_tokens, 1, None)
    check_float("--temperature", temperature, 0.0)
    check_float("--top-p", top_p, 0.0, 1.0, lo_open=True)
    check_threads(threads)
