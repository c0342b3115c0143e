"""A thin export wrapper: smolship's Llama layers behind swift-transformers' stateful I/O.

exporter/model.py keeps one KV cache per layer and takes a start position; swift-transformers wants
one stacked ``keyCache`` / ``valueCache`` state each and a ``causalMask`` input from which the
number of past tokens follows (``past = mask.shape[-1] - query``). This module holds the two
stacked buffers (Core ML turns registered buffers named like the states into states) and runs the
model's own modules - embedding, norms, projections, MLP, lm_head, RoPE tables - in the same order
as ``Llama.forward``; only the cache write (slice assignment, which coremltools lowers to an
in-place state update, per Apple's stateful-Llama recipe), the mask source and RMSNorm differ.

Masking, as swift-transformers really calls it (Sources/Models/LanguageModel.swift,
``LanguageModelWithStatefulKVCache.predictNextTokenScores``): every call, prefill included, sends a
**zero** ``causalMask`` of shape ``[1, 1, 1, n + 1]``, n = all tokens so far, with the whole prompt
as ``inputIds`` on the first call and the last token afterwards. So the mask neither masks the
future inside a prefill nor matches the slots used: the cache is filled from slot 1, and slot 0 is
never written. The graph therefore (1) masks the future itself, from positions (``past + i`` may
see slots ``<= past + i``), and (2) masks slots whose key is exactly zero: Core ML initialises
state buffers to zeros (MLModel.makeState), and no written key is all-zero. RoPE depends only on
relative positions, so the shift by one changes nothing. The given mask is still added, so
callers that send a real ``[1, 1, q, past + q]`` causal mask (swift-transformers' Mistral7B
generate.py, smolship's runner) get the same result.

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


def attention_mask(keys: Tensor, past, q_len: int, given: Tensor) -> Tensor:
    """Additive mask (1, 1, q, past+q): the future and never-written (all-zero key) slots get -inf,
    plus the caller's mask (broadcast from [1, 1, 1 or q, past+q])."""
    end = keys.shape[-2]
    slot = torch.arange(end).unsqueeze(0)  # (1, end)
    query_pos = torch.arange(q_len).unsqueeze(1) + past  # (q, 1)
    written = keys[0, 0].abs().amax(-1) > 0  # (end,)
    allowed = (slot <= query_pos) & written  # (q, end)
    blocked = torch.full_like(given[0, 0, :1, :1], float("-inf"))  # (1, 1) in the mask's dtype
    return torch.where(allowed, torch.zeros_like(blocked), blocked) + given  # (1, 1, q, end)


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
        mask = None
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
            if mask is None:  # every layer writes the same slots: one mask from layer 0's keys
                mask = attention_mask(k_all, past, q_len, causal_mask)  # (1, 1, q, past+q)
            y = F.scaled_dot_product_attention(q, attn._repeat_kv(k_all), attn._repeat_kv(v_all),
                                               attn_mask=mask)  # (1, nh, q, hd)
            y = y.transpose(1, 2).reshape(1, q_len, cfg.num_heads * cfg.head_dim)  # (1, q, nh*hd)
            x = x + attn.o_proj(y)
            x = x + layer.mlp(fp16_safe_rms_norm(layer.post_attention_layernorm, x))
        return m.lm_head(fp16_safe_rms_norm(m.norm, x))  # (1, q, vocab)

    def reset(self) -> None:
        getattr(self, KEY_CACHE).zero_()
        getattr(self, VALUE_CACHE).zero_()
