"""Tensor-name tables between Hugging Face Llama checkpoints, llama.cpp's GGUF and the fused matrices
runtimes multiply, kept as data.

Our model's parameter names are Hugging Face's without the ``model.`` prefix. llama.cpp stores the
Q and K projections with their rows permuted for its rotary kernel; `permute_qk` / `unpermute_qk`
convert between the two layouts.
"""

from __future__ import annotations

import numpy as np

# per-layer: GGUF suffix -> HF suffix
LAYER_TENSORS: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_TENSORS: dict[str, str] = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}

# per-layer: fused matrix (ONNX's graph weights, calibration keys) -> the layer modules it concatenates along
# its output, in order; they all multiply the same input. The one fusion table: q/k/v and gate/up.
FUSED: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "o_proj": ("self_attn.o_proj",),
    "gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "down_proj": ("mlp.down_proj",),
}
FUSED_OF: dict[str, str] = {part: fused for fused, parts in FUSED.items() for part in parts}
# the fused matrices an RMSNorm feeds -> that norm (where SmoothQuant folds its scales)
NORM_FED: dict[str, str] = {"qkv_proj": "input_layernorm", "gate_up_proj": "post_attention_layernorm"}


def gguf_to_ours(name: str) -> str:
    if name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[name]
    if name.startswith("blk."):
        _, idx, rest = name.split(".", 2)
        if rest in LAYER_TENSORS:
            return f"layers.{idx}.{LAYER_TENSORS[rest]}"
    raise KeyError(f"unknown GGUF tensor name '{name}'")


def ours_to_gguf(name: str) -> str:
    for g, h in GLOBAL_TENSORS.items():
        if name == h:
            return g
    if name.startswith("layers."):
        _, idx, rest = name.split(".", 2)
        for g, h in LAYER_TENSORS.items():
            if rest == h:
                return f"blk.{idx}.{g}"
    raise KeyError(f"no GGUF name for tensor '{name}'")


def hf_to_ours(name: str) -> str:
    return name.removeprefix("model.")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (rotate-half) row order -> llama.cpp's interleaved order. w: (out, in)."""
    out, inp = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, inp).swapaxes(1, 2).reshape(out, inp)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's interleaved row order -> HF (rotate-half) order. w: (out, in)."""
    out, inp = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)
