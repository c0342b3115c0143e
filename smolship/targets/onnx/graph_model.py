"""The two nn.Modules that torch.onnx exports: onnxruntime-genai's decoder I/O around the project's model.

Both take ``input_ids (1, T) int64, attention_mask (1, total) int64, past_key_values.N.key/value``
and return ``logits (1, T, V)`` and ``present.N.key/value`` - the names onnxruntime-genai binds.

* `ExplicitDecoder` ("plain" graph): calls ``Llama.forward_explicit`` of exporter/model.py unchanged;
  past grows by concatenation (``past_present_share_buffer: false``), standard ONNX ops only.
* `FusedDecoder` ("fused" graph, the default): the same weights and math, re-wired for ONNX Runtime's
  fused kernels (contrib_ops.py): packed QKV and gate/up projections, GroupQueryAttention with rotary
  inside over a KV buffer that past and present share (``past_present_share_buffer: true``),
  SkipSimplifiedLayerNormalization for every residual add + RMSNorm. For quantized recipes the tied
  lm_head is its own pre-transposed weight, so the quantizers see an ordinary MatMul; float recipes
  keep it tied (Transpose of the embedding, folded by ONNX Runtime at load) so the file holds one copy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smolship.exporter.config import LlamaConfig
from smolship.exporter.model import RMSNorm, rope_tables
from smolship.targets.onnx import contrib_ops  # noqa: F401  (registers torch.ops.smolship_ort)


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Graph input and output names, in order."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", *past], ["logits", *present]


class ExplicitDecoder(nn.Module):
    """forward_explicit with genai's I/O; attention_mask is accepted (genai always sends it) and unused."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *past: Tensor):
        logits, presents = self.model.forward_explicit(input_ids, list(past))
        return (logits, *presents)


def _linear_t(weight: Tensor) -> nn.Parameter:
    """(out, in) nn.Linear weight -> (in, out), the layout ONNX MatMul and the quantizers use."""
    return nn.Parameter(weight.t().contiguous(), requires_grad=False)


class _FusedLayer(nn.Module):
    def __init__(self, sd: dict[str, Tensor], prefix: str, smooth: dict[str, Tensor]):
        super().__init__()
        w = lambda name: sd[prefix + name]
        ones = torch.ones(sd[prefix + "input_layernorm.weight"].shape)
        s_qkv, s_mlp = smooth.get(prefix + "qkv_proj", ones), smooth.get(prefix + "gate_up_proj", ones)
        # RMSNorm(x) * g @ W == RMSNorm(x) * (g / s) @ (s[:, None] * W): exact, and it evens out the
        # channel magnitudes that int8 activation quantization sees (SmoothQuant, Xiao et al., 2022).
        self.input_norm = nn.Parameter(w("input_layernorm.weight") / s_qkv, requires_grad=False)
        self.post_norm = nn.Parameter(w("post_attention_layernorm.weight") / s_mlp, requires_grad=False)
        self.qkv_proj = _linear_t(torch.cat([w("self_attn.q_proj.weight"), w("self_attn.k_proj.weight"),
                                             w("self_attn.v_proj.weight")]) * s_qkv)  # (h, (nh + 2 nkv) hd)
        self.o_proj = _linear_t(w("self_attn.o_proj.weight"))
        self.gate_up_proj = _linear_t(torch.cat([w("mlp.gate_proj.weight"), w("mlp.up_proj.weight")]) * s_mlp)  # (h, 2 i)
        self.down_proj = _linear_t(w("mlp.down_proj.weight"))


class FusedDecoder(nn.Module):
    """The Llama of exporter/model.py on ONNX Runtime's fused kernels (see the module docstring)."""

    def __init__(self, cfg: LlamaConfig, state_dict: dict[str, Tensor], max_seq_len: int,
                 smooth: dict[str, Tensor] | None = None, materialize_lm_head: bool = True):
        super().__init__()
        self.cfg = cfg
        sd = state_dict
        self.embed_tokens = nn.Parameter(sd["embed_tokens.weight"], requires_grad=False)  # (V, h)
        self.tied_head = cfg.tie_word_embeddings and not materialize_lm_head
        if not self.tied_head:
            head = sd["embed_tokens.weight"] if cfg.tie_word_embeddings else sd["lm_head.weight"]
            self.lm_head = _linear_t(head)  # (h, V): its own weight even when tied, see module docstring
        self.layers = nn.ModuleList(_FusedLayer(sd, f"layers.{i}.", smooth or {}) for i in range(cfg.num_layers))
        self.norm = nn.Parameter(sd["norm.weight"], requires_grad=False)
        self.first_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)  # no residual yet: plain RMSNorm ops
        self.first_norm.weight = self.layers[0].input_norm
        cos, sin = rope_tables(cfg, max_seq_len)  # (S, hd), halves repeated
        half = cfg.head_dim // 2
        self.register_buffer("cos_cache", cos[:, :half].contiguous())  # (S, hd/2) as GQA wants
        self.register_buffer("sin_cache", sin[:, :half].contiguous())

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *past: Tensor):
        cfg, eps = self.cfg, self.cfg.rms_norm_eps
        seqlens_k = (attention_mask.sum(dim=1) - 1).to(torch.int32)  # (B,) index of the last valid slot
        total_len = torch.zeros((), dtype=torch.int32) + attention_mask.shape[1]  # scalar
        x = nn.functional.embedding(input_ids, self.embed_tokens)  # (B, T, h)
        residual, h = x, self.first_norm(x)
        presents: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            if i > 0:
                h, residual = torch.ops.smolship_ort.skip_rms_norm(mlp_out, residual, layer.input_norm, eps)  # noqa: F821
            attn, k, v = torch.ops.smolship_ort.gqa(h @ layer.qkv_proj, past[2 * i], past[2 * i + 1], seqlens_k,
                                                   total_len, self.cos_cache, self.sin_cache,
                                                   cfg.num_heads, cfg.num_kv_heads)
            presents += [k, v]
            h, residual = torch.ops.smolship_ort.skip_rms_norm(attn @ layer.o_proj, residual, layer.post_norm, eps)
            gate, up = (h @ layer.gate_up_proj).chunk(2, dim=-1)
            mlp_out = (nn.functional.silu(gate) * up) @ layer.down_proj
        h, _ = torch.ops.smolship_ort.skip_rms_norm(mlp_out, residual, self.norm, eps)
        head = self.embed_tokens.t() if self.tied_head else self.lm_head
        return (h @ head, *presents)

    def empty_past(self, max_len: int, dtype=torch.float32) -> list[Tensor]:
        shape = (1, self.cfg.num_kv_heads, max_len, self.cfg.head_dim)
        return [torch.zeros(shape, dtype=dtype) for _ in range(2 * self.cfg.num_layers)]
