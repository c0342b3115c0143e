"""Core ML's cache and norm for the one forward (`Llama.decode`), behind swift-transformers' stateful I/O.

swift-transformers wants one stacked ``keyCache`` / ``valueCache`` state each and a ``causalMask``
input from which the number of past tokens follows (``past = mask.shape[-1] - query``).
`StatefulLlama` holds the two stacked buffers (Core ML turns registered buffers named like the
states into states), swaps the norms for `FP16SafeRMSNorm` and runs ``model.decode`` with a
`StateCache`: the cache write is a slice assignment, which coremltools lowers to an in-place state
update (Apple's stateful-Llama recipe), and the mask comes from the input as below.

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
inputs on device. `FP16SafeRMSNorm` divides each row by its max |x| first - the same value in
exact arithmetic, no overflow in fp16.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smolship.exporter.model import Llama, RMSNorm, Rotary, attention
from smolship.targets.coreml.convention import KEY_CACHE, VALUE_CACHE, cache_shape


class FP16SafeRMSNorm(RMSNorm):
    """norm(x) computed as (x/s) * rsqrt(mean((x/s)^2) + eps/s^2), s = max|x| per row: squares stay <= 1."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.abs().amax(-1, keepdim=True) + 1e-2  # (..., 1); any s > 0 gives the same value: + 1e-2 guards zero rows
        xs = x / s
        return self.weight * (xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + self.eps / s / s))


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


class StateCache:
    """The stacked states ``(L, 1, n_kv, max_seq, hd)``, written at slots ``[past, past + q)``, where
    ``past = causalMask.shape[-1] - q``; the mask is built once, from layer 0's keys."""

    def __init__(self, key_cache: Tensor, value_cache: Tensor, model: Llama, q_len: int, causal_mask: Tensor):
        self.key_cache, self.value_cache, self.given = key_cache, value_cache, causal_mask
        self.q_len, self.end = q_len, causal_mask.shape[-1]
        self.past = self.end - q_len
        cos, sin = model.rope_cos[self.past:self.end], model.rope_sin[self.past:self.end]  # (q, hd)
        self.rotary = Rotary(cos.unsqueeze(1), sin.unsqueeze(1))
        self.mask = None

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        past, end = self.past, self.end
        self.key_cache[layer, :, :, past:end, :] = k.transpose(1, 2)
        self.value_cache[layer, :, :, past:end, :] = v.transpose(1, 2)
        k_all = self.key_cache[layer, :, :, :end, :]  # (1, nkv, past+q, hd)
        v_all = self.value_cache[layer, :, :, :end, :]
        if self.mask is None:  # every layer writes the same slots
            self.mask = attention_mask(k_all, past, self.q_len, self.given)  # (1, 1, q, past+q)
        return attention(q, k_all, v_all, self.mask)


def swap_norms(model: Llama) -> Llama:
    """In place: every RMSNorm becomes an FP16SafeRMSNorm over the same weight."""
    model.swap_norms(FP16SafeRMSNorm)
    return model


class StatefulLlama(nn.Module):
    """forward(inputIds int32 [1, q], causalMask float [1, 1, q, past+q]) -> logits [1, q, vocab]."""

    def __init__(self, model: Llama):
        super().__init__()
        model.drop_static_cache()
        self.model = swap_norms(model)
        shape = cache_shape(model.cfg, model.max_seq_len)  # (L, 1, n_kv, max_seq, hd)
        self.register_buffer(KEY_CACHE, torch.zeros(shape))
        self.register_buffer(VALUE_CACHE, torch.zeros(shape))

    def forward(self, input_ids: Tensor, causal_mask: Tensor) -> Tensor:
        cache = StateCache(getattr(self, KEY_CACHE), getattr(self, VALUE_CACHE), self.model, input_ids.shape[-1],
                           causal_mask)
        return self.model.decode(input_ids, cache)  # (1, q, vocab)
