"""A thin export wrapper: smolship's Llama layers behind swift-transformers' stateful I/O.

exporter/model.py keeps one KV cache per layer and takes a start position; swift-transformers wants
one stacked ``keyCache`` / ``valueCache`` state each and a ``causalMask`` input from which the
number of past tokens follows (``past = mask.shape[-1] - query``). This module holds the two
stacked buffers (Core ML turns registered buffers named like the states into states) and runs the
model's own modules - embedding, norms, projections, MLP, lm_head, RoPE tables - in the same order
as ``Llama.forward``; only the cache write (slice assignment, which coremltools lowers to an
in-place state update, per Apple's stateful-Llama recipe), the mask source and RMSNorm differ.

RMSNorm: Core ML computes the whole graph in fp16, and exporter.model.RMSNorm's ``x.float()`` does
not survive conversion. SmolLM2-135M's residual stream carries activations up to ~25,000 (layers
12+), so ``mean(x**2)`` reaches ~1.1e6, past fp16's 65,504: rsqrt(inf) = 0 would zero those layers'
inputs on device. `fp16_safe_rms_norm` divides each row by its max |x| first - the same value in
exact arithmetic, no overflow in fp16. The model file is not edited.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smolship.exporter.model import Llama, RMSNorm, apply_rope
from smolship.targets.coreml.convention import KEY_CACHE, VALUE_CACHE, cache_shape


def fp16_safe_rms_norm(norm: RMSNorm, x: Tensor) -> Tensor:
    """norm(x) computed as (x/s) * rsqrt(mean((x/s)^2) + eps/s^2), s = max|x| per row: squares stay <= 1."""
    s = x.abs().amax(-1, keepdim=True) + 1e-2  # (..., 1); any s > 0 gives the same value: + 1e-2 guards zero rows
    xs = x / s
    return norm.weight * (xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + norm.eps / s / s))


class StatefulLlama(nn.Module):
    """forward(inputIds int32 [1, q], causalMask float [1, 1, q, past+q]) -> logits [1, q, vocab]."""

    def __init__(self, model: Llama):
        super().__init__()
        self.model = model
        shape = cache_shape(model.cfg, model.max_seq_len)  # (L, 1, n_kv, max_seq, hd)
        self.register_buffer(KEY_CACHE, torch.zeros(shape))
        self.register_buffer(VALUE_CACHE, torch.zeros(shape))

    def forward(self, input_ids: Tensor, causal_mask: Tensor) -> Tensor:
        m, cfg = self.model, self.model.cfg
        q_len = input_ids.shape[-1]
        end = causal_mask.shape[-1]
        past = end - q_len
        cos, sin = m.rope_cos[past:end], m.rope_sin[past:end]  # (q, hd)
        key_cache, value_cache = getattr(self, KEY_CACHE), getattr(self, VALUE_CACHE)
        x = m.embed_tokens(input_ids)  # (1, q, h)
        for i, layer in enumerate(m.layers):
            attn = layer.self_attn
            h = fp16_safe_rms_norm(layer.input_layernorm, x)
            q = attn.q_proj(h).view(1, q_len, cfg.num_heads, cfg.head_dim).transpose(1, 2)  # (1, nh, q, hd)
            k = attn.k_proj(h).view(1, q_len, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)  # (1, nkv, q, hd)
            v = attn.v_proj(h).view(1, q_len, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            key_cache[i, :, :, past:end, :] = k
            value_cache[i, :, :, past:end, :] = v
            k_all = key_cache[i, :, :, :end, :]  # (1, nkv, past+q, hd)
            v_all = value_cache[i, :, :, :end, :]
            y = F.scaled_dot_product_attention(q, attn._repeat_kv(k_all), attn._repeat_kv(v_all),
                                               attn_mask=causal_mask)  # (1, nh, q, hd)
            y = y.transpose(1, 2).reshape(1, q_len, cfg.num_heads * cfg.head_dim)  # (1, q, nh*hd)
            x = x + attn.o_proj(y)
            x = x + layer.mlp(fp16_safe_rms_norm(layer.post_attention_layernorm, x))
        return m.lm_head(fp16_safe_rms_norm(m.norm, x))  # (1, q, vocab)

    def reset(self) -> None:
        getattr(self, KEY_CACHE).zero_()
        getattr(self, VALUE_CACHE).zero_()
