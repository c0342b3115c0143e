"""`smolship export --device-memory 3GB` (issue 29): refuse, before any work, a bundle whose weights plus KV cache
at max_seq_len do not fit the phone's memory budget.

Phones run out of memory before compute, and the KV cache is where a long chat spends it: SmolLM2-1.7B's fp32
cache is 0.8 GB at 2,048 positions and 3.2 GB at 8,192. Two figures make the need, and the refusal says which
is which:
- the KV cache is exact: `preflight.kv_cache_bytes` (fp32, 4 bytes a value, as ExecuTorch and Core ML allocate
  it; ONNX's fused graph and llama.cpp hold the same K and V buffers);
- the weights are an estimate made before exporting: parameters x the recipe's bits per weight. Those bits
  are each default recipe's measured bundle size on SmolLM2-135M (`bench-results/demo_report.md`: size_mb x 8e6 /
  134,515,008 parameters); they include the tied embedding and the layers kept at 8 bits, which are a larger
  share of 135M than of 1.7B, so at 1.7B the estimate runs high (4-bit: ~6 bits against ~5.1 measured), on the
  side of refusing. Other recipes take llama.cpp's nominal bits, or their precision class's highest measured.
The runtime's own memory (activations, libraries) comes on top: `--long-context` measures the peak RSS with the
cache full.
"""

from __future__ import annotations

import re

from smolship.errors import SmolshipError
from smolship.exporter.config import LlamaConfig
from smolship.preflight import GB, kv_cache_bytes

MEASURED_BITS = {  # 135M bundles, bench-results/demo_report.md
    ("onnx", "int8"): 9.25, ("onnx", "int4"): 6.24, ("coreml", "fp16"): 16.09, ("coreml", "w8"): 8.23,
    ("coreml", "w4"): 5.84, ("executorch", "8da8w"): 11.94, ("executorch", "8da4w"): 6.49,
    ("gguf", "q8_0"): 8.61, ("gguf", "q4_k_m"): 5.94,
}
NOMINAL_GGUF_BITS = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0,
                     "q5_k_m": 5.7, "q6_k": 6.56}
CLASS_BITS = {"32-bit": 32.0, "16-bit": 16.09, "8-bit": 11.94, "4-bit": 6.49}  # highest measured of each class

UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def size_text(n: int) -> str:
    """Bytes as GB from 1 GB up, else MB (a tiny model's figures stay readable)."""
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / 1e6:.2f} MB"


def parse_memory(text) -> int:
    """'3GB', '3000 MB', '2.5GiB', '512MiB' -> bytes (GB/MB decimal, GiB/MiB binary); refused otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in UNITS:
        raise SmolshipError(f"--device-memory '{text}' is not an amount of memory with a unit.",
                            "Write it like --device-memory 3GB, 3000MB or 2.5GiB (GB/MB decimal, GiB/MiB binary).")
    value = int(float(m.group(1)) * UNITS[unit])
    if value < 10**6:
        raise SmolshipError(f"--device-memory {text} is out of range: it must be at least 1MB.",
                            "Pass the memory an app may use on the device, like --device-memory 3GB.")
    return value


def bits_per_weight(target: str, recipe: str, precision: str) -> tuple[float, str]:
    """(bits, where the figure comes from) for one recipe."""
    if (target, recipe) in MEASURED_BITS:
        return MEASURED_BITS[target, recipe], "this recipe's bundle size at 135M"
    if target == "gguf" and recipe in NOMINAL_GGUF_BITS:
        return NOMINAL_GGUF_BITS[recipe], "llama.cpp's nominal bits"
    return CLASS_BITS.get(precision, 32.0), f"the highest measured of {precision} recipes"


def need_bytes(cfg: LlamaConfig, target: str, recipe: str, precision: str, max_seq_len: int) -> dict:
    bits, why = bits_per_weight(target, recipe, precision)
    weights = int(cfg.n_params * bits / 8)
    kv = kv_cache_bytes(cfg, max_seq_len)
    return {"bundle": f"{target}-{recipe}", "weights": weights, "bits": bits, "bits_from": why, "kv": kv,
            "total": weights + kv}


def check_device_memory(text, cfg: LlamaConfig | None, pairs: list[tuple[str, str, str]], max_seq_len: int,
                        all_recipes: list[tuple[str, str, str]] = ()) -> int:
    """Refuse when a planned (target, recipe, precision) does not fit `text`; returns the budget in bytes."""
    budget = parse_memory(text)
    if cfg is None:
        raise SmolshipError(f"--device-memory {text} needs the model's size before the export, and this model's "
                            "config cannot be read without downloading it.",
                            "Download the model first (a local GGUF file or HF folder), or drop --device-memory.")
    needs = [need_bytes(cfg, t, r, p, max_seq_len) for t, r, p in pairs]
    over = [n for n in needs if n["total"] > budget]
    if not over:
        return budget
    per_position = kv_cache_bytes(cfg, 1)
    lines = []
    for n in over:
        fits_at = (budget - n["weights"]) // per_position
        room = (f"; at most {fits_at} positions fit beside these weights" if fits_at >= 1
                else "; the weights alone do not fit")
        lines.append(f"{n['bundle']} needs {size_text(n['total'])}: weights {size_text(n['weights'])} (estimate: "
                     f"{cfg.n_params / 1e6:,.1f}M parameters x {n['bits']:g} bits, {n['bits_from']}) + KV cache "
                     f"{size_text(n['kv'])} (exact: fp32 at {max_seq_len} positions){room}")
    fitting = [f"{t}-{r}" for t, r, p in all_recipes if need_bytes(cfg, t, r, p, max_seq_len)["total"] <= budget]
    fix = ("Lower --max-seq-len, choose a smaller recipe with --quant"
           + (f" (fitting at this --max-seq-len: {', '.join(fitting)})" if fitting else "")
           + ", or raise --device-memory. The runtime's own memory comes on top of both figures "
             "(--long-context measures the peak RSS with the cache full).")
    raise SmolshipError(f"Over the device budget of {size_text(budget)} (--device-memory {text}):\n  "
                        + "\n  ".join(lines), fix)
