"""The two nn.Modules that torch.onnx exports: onnxruntime-genai's decoder I/O around the one forward.

Both take ``input_ids (1, T) int64, attention_mask (1, total) int64, past_key_values.N.key/value``
and return ``logits (1, T, V)`` and ``present.N.key/value`` - the names onnxruntime-genai binds.

* `ExplicitDecoder` ("plain" graph): ``Llama.forward_explicit`` (a `ConcatCache`); past grows by
  concatenation (``past_present_share_buffer: false``), standard ONNX ops only.
* `FusedDecoder` ("fused" graph, the default): ``Llama.decode`` with a `GQACache` and module swaps onto
  ONNX Runtime's fused kernels (contrib_ops.py): q/k/v and gate/up each one packed MatMul
  (`PackedAttention`, `PackedMLP`), GroupQueryAttention with rotary inside over a KV buffer that past
  and present share (``past_present_share_buffer: true``), and SkipSimplifiedLayerNormalization for every
  residual add + RMSNorm (`SkipRMSNorm`). Weights are stored (in, out), the layout ONNX MatMul and the
  quantizers use. For quantized recipes the tied lm_head is its own pre-transposed weight, so the
  quantizers see an ordinary MatMul; float recipes keep it tied (Transpose of the embedding, folded by
  ONNX Runtime at load) so the file holds one copy.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smolship.exporter.config import LlamaConfig
from smolship.exporter.model import MLP, Attention, CacheMode, Llama, RMSNorm, rope_halves, rope_tables
from smolship.exporter.naming import FUSED, NORM_FED
from smolship.targets.onnx import contrib_ops  # noqa: F401  (registers torch.ops.smolship_ort)


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Graph input and output names, in order."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", *past], ["logits", *present]


def weight_name(path: str) -> str:
    """The fused graph's initializer name for a parameter path: ``model.layers.3.self_attn.qkv_proj.weight``
    -> ``layers.3.qkv_proj`` (the names quant plans, calibration keys and reports use)."""
    name = path.removeprefix("model.").removesuffix(".weight")
    name = name.replace(".self_attn.", ".").replace(".mlp.", ".")
    return name.replace("input_layernorm", "input_norm").replace("post_attention_layernorm", "post_norm")


class ExplicitDecoder(nn.Module):
    """forward_explicit with genai's I/O; attention_mask is accepted (genai always sends it) and unused."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *past: Tensor):
        logits, presents = self.model.forward_explicit(input_ids, list(past))
        return (logits, *presents)


class MatMulLinear(nn.Module):
    """``x @ weight`` with the weight stored (in, out): one ONNX MatMul on an initializer."""

    def __init__(self, weight_in_out: Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight_in_out.contiguous(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight


class TiedHead(nn.Module):
    """``x @ embedding^T``: the tied lm_head reading the embedding itself (one copy in the file)."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = [embedding]  # a list: not a submodule, so the weight keeps its one name

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.embedding[0].weight.t()


class SkipRMSNorm(RMSNorm):
    """The residual add and the norm as one SkipSimplifiedLayerNormalization (plain ops with no residual yet)."""

    def add_and_norm(self, x: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        if residual is None:
            return self(x), x
        return torch.ops.smolship_ort.skip_rms_norm(x, residual, self.weight, self.eps)


def fused_weight(layer: nn.Module, fused: str, smooth: Tensor | None = None) -> Tensor:
    """A fused matrix (in, out) of one decoder layer: its parts' weights (naming.FUSED) stacked along the
    output, their input columns scaled by `smooth` (SmoothQuant) when given."""
    parts = [layer.get_submodule(p).weight for p in FUSED[fused]]
    w = torch.cat(parts) if len(parts) > 1 else parts[0]  # (N, h)
    return (w if smooth is None else w * smooth).t()


class PackedAttention(Attention):
    """q, k and v from one (h, (nh + 2 nkv) hd) MatMul, handed on packed (GroupQueryAttention's own
    packed-QKV form: key and value None); o_proj a MatMul too. No RoPE here: GQA rotates."""

    @classmethod
    def packing(cls, layer: nn.Module, smooth: Tensor | None) -> "PackedAttention":
        """From a decoder layer's attention: q/k/v and o as naming.FUSED concatenates them."""
        new = cls.like(layer.self_attn)
        new.qkv_proj = MatMulLinear(fused_weight(layer, "qkv_proj", smooth))  # (h, N)
        new.o_proj = MatMulLinear(fused_weight(layer, "o_proj"))
        return new

    def project(self, x: Tensor, rotary) -> tuple[Tensor, None, None]:
        return self.qkv_proj(x), None, None  # (B, T, (nh + 2 nkv) hd)


class PackedMLP(MLP):
    """gate and up from one (h, 2 i) MatMul; down_proj a MatMul."""

    def __init__(self, layer: nn.Module, smooth: Tensor | None):
        """From a decoder layer's MLP: gate/up and down as naming.FUSED concatenates them."""
        nn.Module.__init__(self)
        self.gate_up_proj = MatMulLinear(fused_weight(layer, "gate_up_proj", smooth))  # (h, 2 i)
        self.down_proj = MatMulLinear(fused_weight(layer, "down_proj"))

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(nn.functional.silu(gate) * up)


class GQACache:
    """GroupQueryAttention over genai's shared buffers ``[1, n_kv, max_seq, hd]`` (past in, present out);
    the kernel applies RoPE (`rotary` None) and writes the new K/V at ``total - T``. It takes the kernel's
    packed form from `PackedAttention`: q is ``(B, T, (nh + 2 nkv) hd)``, k and v are None."""

    rotary = None

    def __init__(self, past: tuple[Tensor, ...], attention_mask: Tensor, cos_cache: Tensor, sin_cache: Tensor,
                 cfg: LlamaConfig):
        self.past, self.cos_cache, self.sin_cache, self.cfg = past, cos_cache, sin_cache, cfg
        self.seqlens_k = (attention_mask.sum(dim=1) - 1).to(torch.int32)  # (B,) index of the last valid slot
        self.total_len = torch.zeros((), dtype=torch.int32) + attention_mask.shape[1]  # scalar
        self.presents: list[Tensor] = []

    def attend(self, layer: int, q: Tensor, k: None, v: None) -> Tensor:
        assert k is None and v is None, "GQACache takes packed q/k/v (PackedAttention)"
        y, k_all, v_all = torch.ops.smolship_ort.gqa(
            q, self.past[2 * layer], self.past[2 * layer + 1], self.seqlens_k,
            self.total_len, self.cos_cache, self.sin_cache, self.cfg.num_heads, self.cfg.num_kv_heads)
        self.presents += [k_all, v_all]
        return y


def smoothed_norms(model: Llama, smooth: dict[str, Tensor]) -> None:
    """RMSNorm(x) * g @ W == RMSNorm(x) * (g / s) @ (s[:, None] * W): exact, and it evens out the channel
    magnitudes that int8 activation quantization sees (SmoothQuant, Xiao et al., 2022). The norms here;
    `PackedAttention` / `PackedMLP` scale the matrices."""
    for i, layer in enumerate(model.layers):
        for fused, name in NORM_FED.items():
            if (key := f"layers.{i}.{fused}") in smooth:
                norm = getattr(layer, name)
                norm.weight = nn.Parameter(norm.weight / smooth[key], requires_grad=False)


class FusedDecoder(nn.Module):
    """``Llama.decode`` on ONNX Runtime's fused kernels (see the module docstring)."""

    def __init__(self, cfg: LlamaConfig, state_dict: dict[str, Tensor], max_seq_len: int,
                 smooth: dict[str, Tensor] | None = None, materialize_lm_head: bool = True):
        super().__init__()
        self.cfg, smooth = cfg, smooth or {}
        model = Llama.with_weights(cfg, state_dict, max_seq_len, CacheMode.EXPLICIT)  # the source's tensors, no copy
        del model.rope_cos, model.rope_sin  # GQA reads its own half tables
        smoothed_norms(model, smooth)
        model.swap_norms(SkipRMSNorm)
        for i, layer in enumerate(model.layers):
            layer.self_attn = PackedAttention.packing(layer, smooth.get(f"layers.{i}.qkv_proj"))
            layer.mlp = PackedMLP(layer, smooth.get(f"layers.{i}.gate_up_proj"))
        if cfg.tie_word_embeddings and not materialize_lm_head:
            model.lm_head = TiedHead(model.embed_tokens)
        else:  # its own (h, V) weight even when tied, see module docstring
            model.lm_head = MatMulLinear(model.lm_head.weight.t())
        self.model = model
        cos, sin = rope_halves(*rope_tables(cfg, max_seq_len))  # (S, hd/2) as GQA wants
        self.register_buffer("cos_cache", cos)
        self.register_buffer("sin_cache", sin)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *past: Tensor):
        cache = GQACache(past, attention_mask, self.cos_cache, self.sin_cache, self.cfg)
        return (self.model.decode(input_ids, cache), *cache.presents)

    def empty_past(self, max_len: int, dtype=torch.float32) -> list[Tensor]:
        shape = (1, self.cfg.num_kv_heads, max_len, self.cfg.head_dim)
        return [torch.zeros(shape, dtype=dtype) for _ in range(2 * self.cfg.num_layers)]
