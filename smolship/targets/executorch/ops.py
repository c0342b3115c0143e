"""ExecuTorch's cache and module swaps for the one forward (`Llama.decode`), off ExecuTorch's slow paths.

The reference cache (exporter/model.py `StaticCache`) writes with ``index_copy_`` and attends with
``F.scaled_dot_product_attention`` over the whole ``[1, n_kv, max_seq, hd]`` buffer after expanding
K/V for grouped-query attention. Lowered as is, that becomes portable ``index_put``, ``expand_copy``,
``bmm`` and ``softmax`` kernels that touch all ``max_seq`` slots at every step. ExecuTorch ships two
custom ops for exactly this (executorch/extension/llm/custom_ops, used by its own Llama export):

* ``llama::update_cache(value[B, T, H, D], cache[B, S, H, D], start_pos)`` - in-place slice write;
* ``llama::custom_sdpa(q[B, T, Hq, D], k_cache, v_cache, start_pos, mask, dropout, is_causal)`` -
  a flash-style kernel that reads only slots ``<= start_pos + i``, handles GQA natively and needs
  no mask tensor.

Both want the sequence in dim 1, so `CustomOpCache`'s buffers are ``[1, max_seq, n_kv, hd]``.

More swaps keep each decoder layer inside as few XNNPACK partitions and operators as possible
(every portable op between delegated ops splits a partition; 330 partitions made lowering take minutes):

* `XnnpackRMSNorm`: the row mean as an fp32 matmul with a ``[1, d]`` row of ``1/d`` (XNNPACK takes
  no last-dim ``mean``; a 4-D one brings two layout transposes);
* RoPE's rotate-half as a fixed 0/±1 matrix (`MatrixRotary`), so ``slice``/``neg``/``cat`` become one
  exact fp32 linear;
* q/k/v as one matmul (`FusedQKVAttention`, `quantize.concat_outputs`) with RoPE on all heads at once,
  its tables the identity on the v heads; the split happens outside the delegate, beside the custom ops;
* `SharedInputMLP` goes through `quantize.apply_all`, so gate and up share one block-mean
  computation for their asymmetric-int4 offsets.

`swap_modules` replaces submodules (same weights, same parameter names), and `ExportLlama` is the
exported entry: it turns ``input_pos`` into one symbolic ``start_pos`` (``.item()``), slices the
RoPE tables with it and calls ``Llama.decode`` with a `CustomOpCache`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smolship.exporter.model import MLP, Attention, KVBuffers, Llama, RMSNorm, Rotary, rope_halves
from smolship.exporter.naming import FUSED
from smolship.targets.executorch.quantize import apply_all, concat_outputs, mean_row


def load_custom_ops() -> None:
    """Register ``torch.ops.llama.*`` (eager CPU kernels + export meta functions)."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


class XnnpackRMSNorm(RMSNorm):
    """RMSNorm whose row mean is an fp32 matmul with a ``[1, d]`` row of ``1/d`` (one XNNPACK FC;
    XNNPACK takes no last-dim ``mean``, and a 4-D one costs two layout transposes)."""

    @classmethod
    def like(cls, norm: RMSNorm) -> "XnnpackRMSNorm":
        new = super().like(norm)
        new.register_buffer("mean_row", mean_row(norm.weight.shape[0]), persistent=False)
        return new

    def forward(self, x: Tensor) -> Tensor:
        ms = torch.nn.functional.linear(x * x, self.mean_row)  # (B, T, 1)
        return self.weight * (x * torch.rsqrt(ms + self.eps))


class MatrixRotary(Rotary):
    """RoPE whose rotate-half is ``x @ R``, R a signed permutation (exact in fp32): one XNNPACK linear
    instead of ``slice``/``neg``/``cat``."""

    def __init__(self, cos: Tensor, sin: Tensor, r_t: Tensor):
        super().__init__(cos, sin)
        self.r_t = r_t

    def rotate_half(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.r_t)


def rotate_half_matrix(head_dim: int) -> Tensor:
    """R^T for `MatrixRotary`: ``x @ R == cat(-x[..., h:], x[..., :h])``."""
    h = head_dim // 2
    r = torch.zeros(head_dim, head_dim)
    r[torch.arange(h) + h, torch.arange(h)] = -1.0  # out[:h] = -x[h:]
    r[torch.arange(h), torch.arange(h) + h] = 1.0  # out[h:] = x[:h]
    return r.t().contiguous()


class CustomOpCache:
    """Each layer's `KVBuffers` ``[1, max_seq, n_kv, hd]`` (sequence in dim 1), written by
    ``llama::update_cache`` at ``start_pos`` and read by ``llama::custom_sdpa`` (causal from
    ``start_pos``: no mask tensor)."""

    def __init__(self, model: Llama, start_pos, rotary: Rotary):
        self.buffers = [layer.self_attn.kv_cache for layer in model.layers]
        self.start_pos, self.rotary = start_pos, rotary

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        buf = self.buffers[layer]
        torch.ops.llama.update_cache(k, buf.k_cache, self.start_pos)
        torch.ops.llama.update_cache(v, buf.v_cache, self.start_pos)
        y = torch.ops.llama.custom_sdpa(q, buf.k_cache, buf.v_cache, self.start_pos, None, 0.0, True)  # (B, T, nh, hd)
        return y.reshape(q.shape[0], -1, q.shape[2] * q.shape[3])


class FusedQKVAttention(Attention):
    """`Attention` whose projection shares work between q, k and v: one matmul (`fuse_qkv`) with RoPE on
    all heads at once (the rotary's tables are the identity on the v heads), or `apply_all` (one
    block-mean computation for the three). It holds its layer's seq-major `KVBuffers` (`kv_cache`)."""

    @classmethod
    def from_attention(cls, attn: Attention, max_seq_len: int) -> "FusedQKVAttention":
        new = cls.like(attn)
        new.q_proj, new.k_proj, new.v_proj, new.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        new.qkv_proj = None
        new.kv_cache = KVBuffers((1, max_seq_len, attn.n_kv_heads, attn.head_dim))  # sequence in dim 1
        return new

    def fuse_qkv(self, qkv: nn.Module) -> None:
        """Use `qkv` (quantize.concat_outputs of q/k/v) from now on; RoPE then wants tables that are
        the identity on the v heads (`ExportLlama` builds them)."""
        self.qkv_proj = qkv
        del self.q_proj, self.k_proj, self.v_proj

    def project(self, x: Tensor, rotary: Rotary) -> tuple[Tensor, Tensor, Tensor]:
        b = x.shape[0]  # token dim as -1 in every reshape: XNNPACK takes one inferred dim, no symbols
        nh, nkv = self.n_heads, self.n_kv_heads
        if self.qkv_proj is not None:
            y = rotary(self.qkv_proj(x).view(b, -1, nh + 2 * nkv, self.head_dim))  # cos 1, sin 0 on the v heads
            return y[:, :, :nh], y[:, :, nh:nh + nkv], y[:, :, nh + nkv:]
        q, k, v = apply_all((self.q_proj, self.k_proj, self.v_proj), x)
        q = rotary(q.view(b, -1, nh, self.head_dim))  # (B, T, nh, hd)
        k = rotary(k.view(b, -1, nkv, self.head_dim))  # (B, T, nkv, hd)
        return q, k, v.view(b, -1, nkv, self.head_dim)


class SharedInputMLP(nn.Module):
    """SwiGLU with gate and up applied through `apply_all` (one block-mean computation for both)."""

    def __init__(self, mlp: MLP):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def forward(self, x: Tensor) -> Tensor:
        gate, up = apply_all((self.gate_proj, self.up_proj), x)
        return self.down_proj(torch.nn.functional.silu(gate) * up)


def swap_modules(model: Llama) -> Llama:
    """In place: attention with its own seq-major cache (q/k/v as one matmul where every layer's three
    share a scheme), the shared-input MLP and XNNPACK-friendly norms."""
    load_custom_ops()
    model.drop_static_cache()
    for layer in model.layers:
        if not isinstance(layer.self_attn, FusedQKVAttention):
            layer.self_attn = FusedQKVAttention.from_attention(layer.self_attn, model.max_seq_len)
        if isinstance(layer.mlp, MLP):
            layer.mlp = SharedInputMLP(layer.mlp)
    model.swap_norms(XnnpackRMSNorm)
    attns = [layer.self_attn for layer in model.layers]
    if all(a.qkv_proj is None for a in attns):  # all layers or none: they share the RoPE tables
        fused = [concat_outputs([layer.get_submodule(p) for p in FUSED["qkv_proj"]]) for layer in model.layers]
        if all(f is not None for f in fused):
            for a, f in zip(attns, fused):
                a.fuse_qkv(f)
    return model


def qkv_fused(model: Llama) -> bool:
    return isinstance(model.layers[0].self_attn, FusedQKVAttention) and model.layers[0].self_attn.qkv_proj is not None


class ExportLlama(nn.Module):
    """The exported forward: ``forward(tokens int64[1, n], input_pos int64[1]) -> logits[1, n, V]``.

    ``Llama.decode`` with a `CustomOpCache`: the start position is read once as a symbolic int so
    RoPE is a ``narrow`` and the custom ops get a scalar, which keeps the token dimension dynamic
    (prefill of any length up to the bound, decode of 1).
    """

    def __init__(self, model: Llama):
        super().__init__()
        self.model = swap_modules(model)
        self.max_seq_len = model.max_seq_len
        # RoPE tables repeat their first half (rotate-half layout), so the program stores only that
        # half and concatenates per call: 0.5 MB less at 2048 positions, the same values.
        cos_half, sin_half = rope_halves(model.rope_cos, model.rope_sin)
        del model.rope_cos, model.rope_sin
        model.register_buffer("rope_cos_half", cos_half, persistent=False)
        model.register_buffer("rope_sin_half", sin_half, persistent=False)
        self.register_buffer("rotate_half_t", rotate_half_matrix(model.cfg.head_dim), persistent=False)
        self.fused_qkv = qkv_fused(model)
        if self.fused_qkv:  # (heads, 1): 1 on the q and k heads of the fused q/k/v output, 0 on v; and 1 - that
            cfg = model.cfg
            qk = (torch.arange(cfg.num_heads + 2 * cfg.num_kv_heads) < cfg.num_heads + cfg.num_kv_heads).float()
            self.register_buffer("rope_qk_heads", qk.unsqueeze(1), persistent=False)
            self.register_buffer("rope_v_heads", 1.0 - qk.unsqueeze(1), persistent=False)

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        m = self.model
        t = tokens.shape[1]
        start = input_pos[0].item()
        torch._check(start >= 0)
        torch._check(start + t <= self.max_seq_len)
        cos = m.rope_cos_half.narrow(0, start, t)  # (T, hd/2)
        sin = m.rope_sin_half.narrow(0, start, t)
        cos, sin = torch.cat([cos, cos], -1).unsqueeze(1), torch.cat([sin, sin], -1).unsqueeze(1)  # (T, 1, hd)
        if self.fused_qkv:  # (T, nh + 2 nkv, hd): cos 1 and sin 0 (exactly) on the v heads
            cos, sin = cos * self.rope_qk_heads + self.rope_v_heads, sin * self.rope_qk_heads
        return m.decode(tokens, CustomOpCache(m, start, MatrixRotary(cos, sin, self.rotate_half_t)))
