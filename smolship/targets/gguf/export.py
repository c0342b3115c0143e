"""Write one GGUF file with gguf-py: metadata, then each tensor copied, cast or quantized per its plan.

Tensors are stored in llama.cpp's layout: PyTorch (out, in) arrays (gguf-py reverses the dims), Q and
K rows permuted for llama.cpp's interleaved rotary kernel, and no output.weight when the embedding is
tied (llama.cpp then reuses token_embd for the lm_head).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smolship.exporter.naming import permute_qk
from smolship.targets.gguf.metadata import add_general, add_llama_hparams, add_tokenizer
from smolship.targets.gguf.plan import TensorPlan, ggml_type
from smolship.targets.gguf.requant import EXACT, GRID_TYPES, q5_exact, q8_0_on_grid

RAW_NUMPY_TYPES = ("F32", "F16", "F64", "I8", "I16", "I32", "I64")  # gguf-py infers these from the dtype


def llama_layout(plan: TensorPlan, source) -> np.ndarray:
    """fp32 (out, in) array of `plan` in llama.cpp's row order."""
    w = source.state_dict[plan.ours].detach().cpu().float().numpy()
    if plan.name.endswith("attn_q.weight"):
        w = permute_qk(w, source.config.num_heads)
    elif plan.name.endswith("attn_k.weight"):
        w = permute_qk(w, source.config.num_kv_heads)
    return w


def encode(w: np.ndarray, type_name: str) -> tuple[np.ndarray, object]:
    """(array, raw_dtype) for GGUFWriter.add_tensor: plain floats, or gguf-py's quantized bytes."""
    import gguf

    if type_name == "F32":
        return np.ascontiguousarray(w, dtype=np.float32), None
    if type_name == "F16":
        return np.ascontiguousarray(w, dtype=np.float16), None
    qtype = ggml_type(type_name)
    return gguf.quants.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype), qtype


def requantized(plan: TensorPlan, source) -> tuple[np.ndarray, object] | None:
    """A source tensor on a 32-block grid re-quantized onto that grid (requant.py), or None."""
    if source.gguf is None or plan.name not in source.gguf.tensors:
        return None
    t = source.gguf.tensors[plan.name]
    src = t.tensor_type.name
    if (src, plan.type) in EXACT:
        return q5_exact(llama_layout(plan, source), t.data, src, plan.type), ggml_type(plan.type)
    if plan.type == "Q8_0" and src in GRID_TYPES:
        return q8_0_on_grid(llama_layout(plan, source), t.data, src), ggml_type("Q8_0")
    return None


def copied(plan: TensorPlan, source) -> tuple[np.ndarray, object]:
    """The source GGUF's own bytes for this tensor (memory-mapped; nothing is decoded)."""
    t = source.gguf.tensors[plan.name]
    if t.tensor_type.name in RAW_NUMPY_TYPES:
        return t.data, None
    return t.data, t.tensor_type


def write_gguf(path: Path, source, plans: list[TensorPlan], ftype: int, context_length: int,
               extra_kv: dict | None = None, license_: str | None = None, progress=None) -> dict:
    """Write the file; returns {"grid_requantized": tensors re-quantized on their source grid}."""
    import gguf

    cfg = source.config
    w = gguf.GGUFWriter(path, "llama")
    n_params = int(sum(int(np.prod(p.shape)) for p in plans))
    add_general(w, source, ftype, n_params, license_)
    add_llama_hparams(w, cfg, context_length)
    add_tokenizer(w, source.tokenizer, cfg.vocab_size, source.gguf.fields if source.gguf is not None else None)
    for key, val in (extra_kv or {}).items():
        if isinstance(val, str):
            w.add_string(key, val)
        elif isinstance(val, int):
            w.add_uint32(key, val)
        else:
            w.add_array(key, list(val))
    n_grid = 0
    for i, p in enumerate(plans):
        grid = None if p.copy else requantized(p, source)
        n_grid += grid is not None
        arr, raw = copied(p, source) if p.copy else grid or encode(llama_layout(p, source), p.type)
        w.add_tensor(p.name, arr, raw_dtype=raw)
        if progress:
            progress(f"gguf {p.name}", (i + 1) / len(plans))
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return {"grid_requantized": n_grid}

