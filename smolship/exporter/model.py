"""The one Llama decoder every target exports (RMSNorm, RoPE, grouped-query attention, SwiGLU).

Written for export, after gpt-fast's model.py (no data-dependent control flow, RoPE and mask tables
built once and indexed by position) and mlx-lm's models/llama.py (the KV cache is an object the
forward is given). `Llama.decode(tokens, cache)` is the only forward; what differs between runtimes
is the cache object and a few module swaps, never a second decoder:

* the **cache** decides where positions come from, how RoPE is applied, where K/V are written and
  how attention reads them (its `rotary` and `attend`). Here: `StaticCache` (in-place buffers
  ``[1, n_kv, max_seq, hd]``, the reference runner and calibration) and `ConcatCache` (past K/V in,
  present K/V out: ONNX's standard-op graph). Each target's own cache lives in its folder: Core ML's
  stacked states (coreml/stateful.py), ExecuTorch's custom ops (executorch/ops.py), ONNX Runtime's
  GroupQueryAttention over a shared buffer (onnx/graph_model.py).
* **module swaps** replace a norm, the q/k/v projection or the MLP with a subclass that computes the
  same function on the runtime's fast path (fp16-safe or XNNPACK norms, fused projections, a
  residual add fused into the next norm). They keep the parameter names.

The residual stream is carried vLLM-style: each norm takes the sublayer's output and the residual
(`RMSNorm.add_and_norm`), so a runtime with an add+norm kernel swaps the norm and nothing else.

`Llama(tokens, input_pos)` is the reference call: `decode` over the model's own `StaticCache`
(``CacheMode.BUFFERS``). ``CacheMode.EXPLICIT`` builds no buffers, for targets that bring their cache.
Parameter names follow Hugging Face's LlamaForCausalLM without the ``model.`` prefix, so checkpoints
map one-to-one. Q/K use Hugging Face's rotate-half RoPE layout.
"""

from __future__ import annotations

import contextlib
import enum
import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smolship.exporter.config import LlamaConfig

LAYER_NORMS = ("input_layernorm", "post_attention_layernorm")  # each decoder layer's RMSNorms (Llama.swap_norms)


class CacheMode(str, enum.Enum):
    BUFFERS = "buffers"  # the model owns in-place K/V buffers: Llama(tokens, input_pos) works
    EXPLICIT = "explicit"  # no buffers: a caller passes its own cache to `decode`


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

    def add_and_norm(self, x: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        """(norm(residual + x), residual + x); residual None: x starts the stream."""
        s = x if residual is None else x + residual
        return self(s), s

    @classmethod
    def like(cls, norm: "RMSNorm") -> "RMSNorm":
        """A swap: this class over `norm`'s own weight Parameter (same name, same storage)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.eps, new.weight = norm.eps, norm.weight
        return new


def rope_tables(cfg: LlamaConfig, max_seq_len: int) -> tuple[Tensor, Tensor]:
    """cos/sin tables ``[max_seq, head_dim]`` in Hugging Face's (rotate-half) layout."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim))
    t = torch.arange(max_seq_len, dtype=torch.int64).float()
    freqs = torch.outer(t, inv_freq)  # (S, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (S, hd)
    return emb.cos(), emb.sin()


def rope_halves(cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """The first halves ``[max_seq, head_dim/2]`` of `rope_tables`, which repeat them: what a runtime stores when
    its kernel takes half tables (GroupQueryAttention) or it concatenates per call (ExecuTorch: half the bytes)."""
    half = cos.shape[-1] // 2
    if not (torch.equal(cos[:, half:], cos[:, :half]) and torch.equal(sin[:, half:], sin[:, :half])):
        raise ValueError("RoPE tables do not repeat their first half (rotate-half layout expected)")
    return cos[:, :half].clone(), sin[:, :half].clone()


class Rotary:
    """RoPE at one call's positions for ``(B, T, heads, hd)`` tensors; cos/sin ``(T, 1, hd)`` (or
    ``(T, heads, hd)``), broadcast over the heads."""

    def __init__(self, cos: Tensor, sin: Tensor):
        self.cos, self.sin = cos, sin

    def rotate_half(self, x: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def __call__(self, x: Tensor) -> Tensor:
        return x * self.cos + self.rotate_half(x) * self.sin


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, n_kv, S, hd) -> (B, n_kv * n_rep, S, hd) for grouped-query attention."""
    if n_rep == 1:
        return x
    b, nkv, s, hd = x.shape
    return x[:, :, None].expand(b, nkv, n_rep, s, hd).reshape(b, nkv * n_rep, s, hd)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """q (B, T, nh, hd); k/v (B, n_kv, S, hd) -> (B, T, nh * hd)."""
    b, t, nh, hd = q.shape
    n_rep = nh // k.shape[1]
    y = F.scaled_dot_product_attention(q.transpose(1, 2), repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=mask)
    return y.transpose(1, 2).reshape(b, t, nh * hd)


class Cache(Protocol):
    """What `Llama.decode` needs from a cache: RoPE for this call's positions (None when `attend`
    applies it, as a kernel with rotary inside does) and attention that stores the new K/V."""

    rotary: Rotary | None

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (B, T, nh, hd), k/v (B, T, n_kv, hd) for this call's tokens -> (B, T, nh * hd)."""
        ...


class KVBuffers(nn.Module):
    """One layer's fixed-size K/V buffers, updated in place (gpt-fast's KVCache): ``[1, n_kv, max_seq, hd]``
    here; a runtime's cache may lay them out otherwise (ExecuTorch: sequence in dim 1)."""

    def __init__(self, shape: tuple[int, ...], dtype=torch.float32):
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)


class StaticCache:
    """The model's own buffers, written at ``input_pos + i``; query i sees slots ``<= input_pos + i``."""

    def __init__(self, model: "Llama", input_pos: Tensor, t: int):
        self.buffers = model.kv_buffers
        self.positions = input_pos + torch.arange(t, dtype=torch.int64)  # (T,)
        self.rotary = Rotary(model.rope_cos[self.positions].unsqueeze(1), model.rope_sin[self.positions].unsqueeze(1))
        self.mask = model.causal_mask[self.positions]  # (T, max_seq)

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        buf = self.buffers[layer]
        buf.k_cache.index_copy_(2, self.positions, k.transpose(1, 2))
        buf.v_cache.index_copy_(2, self.positions, v.transpose(1, 2))
        return attention(q, buf.k_cache, buf.v_cache, self.mask)


class ConcatCache:
    """Past K/V ``[1, n_kv, P, hd]`` per layer in, grown by concatenation; `presents` holds them after."""

    def __init__(self, model: "Llama", past: list[Tensor], t: int):
        self.past, p = past, past[0].shape[2]
        positions = p + torch.arange(t, dtype=torch.int64)  # (T,)
        self.rotary = Rotary(model.rope_cos[positions].unsqueeze(1), model.rope_sin[positions].unsqueeze(1))
        self.mask = torch.arange(p + t, dtype=torch.int64)[None, :] <= positions[:, None]  # (T, P+T)
        self.presents: list[Tensor] = []

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        k_all = torch.cat([self.past[2 * layer], k.transpose(1, 2)], dim=2)  # (B, nkv, P+T, hd)
        v_all = torch.cat([self.past[2 * layer + 1], v.transpose(1, 2)], dim=2)
        self.presents += [k_all, v_all]
        return attention(q, k_all, v_all, self.mask)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads, self.head_dim = layer, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, h, bias=False)

    @classmethod
    def like(cls, attn: "Attention") -> "Attention":
        """A swap's start: this class with `attn`'s layer and head shape, and no projections yet."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.layer, new.n_heads, new.n_kv_heads, new.head_dim = attn.layer, attn.n_heads, attn.n_kv_heads, attn.head_dim
        return new

    def project(self, x: Tensor, rotary: Rotary | None) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, T, nh, hd), k and v (B, T, n_kv, hd), q and k rotated when `rotary` is given.
        Swapped by runtimes that fuse the three matmuls. The token dim is -1: export keeps it symbolic."""
        b = x.shape[0]
        q = self.q_proj(x).view(b, -1, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, -1, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, -1, self.n_kv_heads, self.head_dim)
        if rotary is not None:
            q, k = rotary(q), rotary(k)
        return q, k, v

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        q, k, v = self.project(x, cache.rotary)
        return self.o_proj(cache.attend(self.layer, q, k, v))


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, residual: Tensor | None, cache: Cache) -> tuple[Tensor, Tensor]:
        """x: the previous sublayer's output (the embeddings for layer 0, residual None) -> (MLP output, residual)."""
        h, residual = self.input_layernorm.add_and_norm(x, residual)
        h, residual = self.post_attention_layernorm.add_and_norm(self.self_attn(h, cache), residual)
        return self.mlp(h), residual


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
    """Llama decoder; `decode(tokens, cache)` is its one forward (see the module docstring)."""

    def __init__(self, cfg: LlamaConfig, max_seq_len: int = 2048, cache_mode: CacheMode = CacheMode.BUFFERS):
        super().__init__()
        self.cfg, self.max_seq_len, self.cache_mode = cfg, max_seq_len, CacheMode(cache_mode)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg, max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.kv_buffers: nn.ModuleList | None = None
        if self.cache_mode is CacheMode.BUFFERS:
            causal = torch.tril(torch.ones(max_seq_len, max_seq_len, dtype=torch.bool))
            self.register_buffer("causal_mask", causal, persistent=False)
            shape = (1, cfg.num_kv_heads, max_seq_len, cfg.head_dim)
            self.kv_buffers = nn.ModuleList(KVBuffers(shape) for _ in range(cfg.num_layers))

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

    def swap_norms(self, cls: type) -> None:
        """In place: every RMSNorm (both of each layer's and the final one) becomes `cls` over its own weight,
        the module swap a runtime's norm kernel needs; norms that already are `cls` stay."""
        for layer in self.layers:
            for name in LAYER_NORMS:
                if not isinstance(getattr(layer, name), cls):
                    setattr(layer, name, cls.like(getattr(layer, name)))
        if not isinstance(self.norm, cls):
            self.norm = cls.like(self.norm)

    def drop_static_cache(self) -> None:
        """Free the reference cache's buffers and mask, for a target that brings its own cache."""
        self.kv_buffers = None
        if hasattr(self, "causal_mask"):
            del self.causal_mask

    def decode(self, tokens: Tensor, cache: Cache) -> Tensor:
        """THE forward. tokens: int (1, T) -> logits (1, T, V); `cache` supplies positions and attention."""
        x, residual = self.embed_tokens(tokens), None
        if x.dtype != self.norm.weight.dtype:  # a quantized embedding may return its scales' dtype (ExecuTorch's 4-bit: fp16)
            x = x.to(self.norm.weight.dtype)
        for layer in self.layers:
            x, residual = layer(x, residual, cache)
        h, _ = self.norm.add_and_norm(x, residual)
        return self.lm_head(h)

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        """The reference call (BUFFERS mode). tokens: int64 (1, T); input_pos: int64 (1,) position of tokens[0, 0]."""
        return self.decode(tokens, StaticCache(self, input_pos, tokens.shape[1]))

    def forward_explicit(self, tokens: Tensor, past: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """past: [k0, v0, k1, v1, ...] each (1, n_kv, P, hd); returns logits and presents (P + T long)."""
        cache = ConcatCache(self, past, tokens.shape[1])
        return self.decode(tokens, cache), cache.presents

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
