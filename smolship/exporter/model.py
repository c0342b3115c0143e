"""The one Llama decoder every target exports (RMSNorm, RoPE, grouped-query attention, SwiGLU).

Written for export, after gpt-fast's model.py: no data-dependent control flow, RoPE and mask tables
built once and indexed by position, and the KV cache chosen by one switch (`CacheMode`):

* ``CacheMode.BUFFERS`` - the cache lives in fixed-size in-place buffers ``[1, n_kv, max_seq, hd]``;
  ``forward(tokens[1, T], input_pos[1]) -> logits[1, T, V]``. ExecuTorch (mutable buffers) and
  Core ML (states) use this; it is also the reference runner.
* ``CacheMode.EXPLICIT`` - the cache is passed in and returned as tensors (past K/V in, present
  K/V out, ``[1, n_kv, past, hd]``); one graph serves prefill (past length 0) and decode. ONNX uses this.

Parameter names follow Hugging Face's LlamaForCausalLM without the ``model.`` prefix, so checkpoints
map one-to-one (see exporter/weights.py). Q/K use Hugging Face's rotate-half RoPE layout.
"""

from __future__ import annotations

import contextlib
import enum
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smolship.exporter.config import LlamaConfig


class CacheMode(str, enum.Enum):
    BUFFERS = "buffers"
    EXPLICIT = "explicit"


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_tables(cfg: LlamaConfig, max_seq_len: int) -> tuple[Tensor, Tensor]:
    """cos/sin tables ``[max_seq, head_dim]`` in Hugging Face's (rotate-half) layout."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim))
    t = torch.arange(max_seq_len, dtype=torch.int64).float()
    freqs = torch.outer(t, inv_freq)  # (S, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (S, hd)
    return emb.cos(), emb.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, nh, T, hd); cos/sin: (T, hd)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class KVCache(nn.Module):
    """Fixed-size K/V buffers updated in place at the given positions (gpt-fast's KVCache)."""

    def __init__(self, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype=torch.float32):
        super().__init__()
        shape = (1, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, positions: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # positions: (T,); k, v: (1, n_kv, T, hd)
        self.k_cache.index_copy_(2, positions, k)
        self.v_cache.index_copy_(2, positions, v)
        return self.k_cache, self.v_cache


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, h, bias=False)
        self.kv_cache: KVCache | None = None  # set by Llama in BUFFERS mode

    def _repeat_kv(self, x: Tensor) -> Tensor:
        """(B, n_kv, S, hd) -> (B, nh, S, hd) for grouped-query attention."""
        n_rep = self.n_heads // self.n_kv_heads
        if n_rep == 1:
            return x
        b, nkv, s, hd = x.shape
        return x[:, :, None].expand(b, nkv, n_rep, s, hd).reshape(b, nkv * n_rep, s, hd)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, positions: Tensor,
                past_k: Tensor | None = None, past_v: Tensor | None = None):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is not None:
            k_all, v_all = self.kv_cache.update(positions, k, v)  # (B, nkv, max_seq, hd)
            present = None
        else:
            k_all, v_all = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, nkv, P+T, hd)
            present = (k_all, v_all)
        y = F.scaled_dot_product_attention(q, self._repeat_kv(k_all), self._repeat_kv(v_all), attn_mask=mask)
        y = y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)  # (B, T, nh*hd)
        return self.o_proj(y), present


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, positions, past_k=None, past_v=None):
        h, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, positions, past_k, past_v)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), present


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside get meta parameters (no memory, no random init) and real buffers, for a
    model whose weights are assigned right after: at 1.7B the skipped init is a 6.8 GB fp32 copy."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, None if param is None else nn.Parameter(param.to("meta"), param.requires_grad))

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


class Llama(nn.Module):
    """Llama decoder with a static-size KV cache; see the module docstring for the two cache modes."""

    def __init__(self, cfg: LlamaConfig, max_seq_len: int = 2048, cache_mode: CacheMode = CacheMode.BUFFERS):
        super().__init__()
        self.cfg, self.max_seq_len, self.cache_mode = cfg, max_seq_len, CacheMode(cache_mode)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg, max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if self.cache_mode is CacheMode.BUFFERS:
            causal = torch.tril(torch.ones(max_seq_len, max_seq_len, dtype=torch.bool))
            self.register_buffer("causal_mask", causal, persistent=False)
            for layer in self.layers:
                layer.self_attn.kv_cache = KVCache(cfg.num_kv_heads, max_seq_len, cfg.head_dim)

    @classmethod
    def with_weights(cls, cfg: LlamaConfig, state_dict: dict[str, Tensor], max_seq_len: int = 2048,
                     cache_mode: CacheMode = CacheMode.BUFFERS) -> "Llama":
        """An eval model whose parameters ARE `state_dict`'s tensors (no copy, no random init first).
        Raises ValueError naming the weights that do not fit. Callers that edit weights in place
        must pass copies."""
        with parameters_on_meta():
            model = cls(cfg, max_seq_len=max_seq_len, cache_mode=cache_mode)
        missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.embed_tokens.weight  # assign replaced the tied Parameter object
        missing = [m for m in missing if not (m == "lm_head.weight" and cfg.tie_word_embeddings)]
        if missing or unexpected:
            raise ValueError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model.eval()

    def reset_cache(self) -> None:
        for layer in self.layers:
            if layer.self_attn.kv_cache is not None:
                layer.self_attn.kv_cache.k_cache.zero_()
                layer.self_attn.kv_cache.v_cache.zero_()

    def _logits(self, x: Tensor) -> Tensor:
        return self.lm_head(self.norm(x))

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        """BUFFERS mode. tokens: int64 (1, T); input_pos: int64 (1,) position of tokens[0, 0]."""
        t = tokens.shape[1]
        positions = input_pos + torch.arange(t, dtype=torch.int64)  # (T,)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (T, hd)
        mask = self.causal_mask[positions]  # (T, max_seq): query i sees cache slots <= its position
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x, _ = layer(x, cos, sin, mask, positions)
        return self._logits(x)

    def forward_explicit(self, tokens: Tensor, past: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """EXPLICIT mode. past: [k0, v0, k1, v1, ...] each (1, n_kv, P, hd); returns logits and presents."""
        t, p = tokens.shape[1], past[0].shape[2]
        positions = p + torch.arange(t, dtype=torch.int64)  # (T,)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        key_pos = torch.arange(p + t, dtype=torch.int64)
        mask = key_pos[None, :] <= positions[:, None]  # (T, P+T)
        x = self.embed_tokens(tokens)
        presents: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer(x, cos, sin, mask, positions, past[2 * i], past[2 * i + 1])
            presents += [k, v]
        return self._logits(x), presents

    def empty_past(self, dtype=torch.float32) -> list[Tensor]:
        shape = (1, self.cfg.num_kv_heads, 0, self.cfg.head_dim)
        return [torch.zeros(shape, dtype=dtype) for _ in range(2 * self.cfg.num_layers)]

    def init_random(self, seed: int = 0) -> "Llama":
        """Seeded, scaled random weights: logits stay in a realistic range for parity tests."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("layernorm.weight") or name == "norm.weight":
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        return self
