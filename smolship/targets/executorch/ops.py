"""Module swaps that keep attention and the KV-cache update off ExecuTorch's slow portable path.

The project's model (exporter/model.py) writes its cache with ``index_copy_`` and attends with
``F.scaled_dot_product_attention`` over the whole ``[1, n_kv, max_seq, hd]`` buffer after expanding
K/V for grouped-query attention. Lowered as is, that becomes portable ``index_put``, ``expand_copy``,
``bmm`` and ``softmax`` kernels that touch all ``max_seq`` slots at every step. ExecuTorch ships two
custom ops for exactly this (executorch/extension/llm/custom_ops, used by its own Llama export):

* ``llama::update_cache(value[B, T, H, D], cache[B, S, H, D], start_pos)`` - in-place slice write;
* ``llama::custom_sdpa(q[B, T, Hq, D], k_cache, v_cache, start_pos, mask, dropout, is_causal)`` -
  a flash-style kernel that reads only slots ``<= start_pos + i``, handles GQA natively and needs
  no mask tensor.

Both want the sequence in dim 1, so the cache here is ``[1, max_seq, n_kv, hd]``. Nothing in
model.py changes: `swap_attention` replaces each layer's ``self_attn`` with `CustomOpAttention`
(same weights, same submodule names) and `ExportLlama` is the top-level forward that turns
``input_pos`` into one symbolic ``start_pos`` (``.item()``) and slices the RoPE tables with it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smolship.exporter.model import Attention, Llama, apply_rope


def load_custom_ops() -> None:
    """Register ``torch.ops.llama.*`` (eager CPU kernels + export meta functions)."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


class SeqMajorKVCache(nn.Module):
    """K/V buffers ``[1, max_seq, n_kv, hd]`` (sequence in dim 1, the layout the custom ops use)."""

    def __init__(self, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype=torch.float32):
        super().__init__()
        shape = (1, max_seq_len, n_kv_heads, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, start_pos, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v: (1, T, n_kv, hd) written at slots [start_pos, start_pos + T)
        torch.ops.llama.update_cache(k, self.k_cache, start_pos)
        torch.ops.llama.update_cache(v, self.v_cache, start_pos)
        return self.k_cache, self.v_cache


class CustomOpAttention(Attention):
    """`Attention` whose cache write and attention are ExecuTorch custom ops.

    Called by the unchanged DecoderLayer as ``self_attn(x, cos, sin, mask, positions)``; here
    ``positions`` is the symbolic int ``start_pos`` that `ExportLlama` passes down and ``mask`` is
    unused (``custom_sdpa`` is causal from ``start_pos``).
    """

    @classmethod
    def from_attention(cls, attn: Attention, max_seq_len: int) -> "CustomOpAttention":
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.n_heads, new.n_kv_heads, new.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        new.q_proj, new.k_proj, new.v_proj, new.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        new.kv_cache = SeqMajorKVCache(attn.n_kv_heads, max_seq_len, attn.head_dim)
        return new

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask, start_pos, past_k=None, past_v=None):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)  # (B, T, nh, hd)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim)
        cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, hd): broadcast over heads
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_cache, v_cache = self.kv_cache.update(start_pos, k, v)  # (B, max_seq, nkv, hd)
        y = torch.ops.llama.custom_sdpa(q, k_cache, v_cache, start_pos, None, 0.0, True)  # (B, T, nh, hd)
        return self.o_proj(y.reshape(b, t, self.n_heads * self.head_dim)), None


def swap_attention(model: Llama) -> Llama:
    """Replace every layer's attention (and its cache) with `CustomOpAttention`, in place."""
    load_custom_ops()
    for layer in model.layers:
        layer.self_attn = CustomOpAttention.from_attention(layer.self_attn, model.max_seq_len)
    return model


class ExportLlama(nn.Module):
    """The exported forward: ``forward(tokens int64[1, n], input_pos int64[1]) -> logits[1, n, V]``.

    Same submodules and math as ``Llama.forward``; the difference is that the start position is
    read once as a symbolic int so RoPE is a ``narrow`` and the custom ops get a scalar, which
    keeps the token dimension dynamic (prefill of any length up to the cache, decode of 1).
    """

    def __init__(self, model: Llama):
        super().__init__()
        if not all(isinstance(layer.self_attn, CustomOpAttention) for layer in model.layers):
            swap_attention(model)
        self.model = model
        self.max_seq_len = model.max_seq_len
        # The (max_seq, max_seq) causal mask is not used with custom_sdpa; dropping it keeps 4 MB
        # (at 2048) of dead constant out of the program.
        if hasattr(model, "causal_mask"):
            del model.causal_mask

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        m = self.model
        t = tokens.shape[1]
        start = input_pos[0].item()
        torch._check_is_size(start)
        torch._check(start + t <= self.max_seq_len)
        cos = m.rope_cos.narrow(0, start, t)  # (T, hd)
        sin = m.rope_sin.narrow(0, start, t)
        x = m.embed_tokens(tokens)
        for layer in m.layers:
            x, _ = layer(x, cos, sin, None, start)
        return m._logits(x)
