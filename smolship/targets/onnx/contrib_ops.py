"""ONNX Runtime's fused decoder operators, made exportable from PyTorch.

ONNX Runtime runs a Llama layer fastest through three com.microsoft contrib operators:

* ``GroupQueryAttention`` - packed QKV in, rotary embedding inside (``do_rotary=1``), grouped-query
  attention over a KV cache buffer that past and present *share* (sized max_seq_len, written in
  place at ``seqlens_k``), so decode copies nothing;
* ``SkipSimplifiedLayerNormalization`` - residual add + RMSNorm in one kernel (output 0 = normed,
  output 3 = the residual sum);
* ``MatMulNBits`` / ``GatherBlockQuantized`` - added later by quantize.py.

Each is a ``torch.library`` custom op whose eager body reproduces the kernel's math (so the fused
wrapper can be checked against the reference in PyTorch), and an onnxscript translation that emits
the contrib node when ``torch.onnx.export(dynamo=True, custom_translation_table=TRANSLATIONS)`` runs.
The onnx package knows no com.microsoft schemas, so `register_onnx_schemas()` declares the two we
emit (inputs, outputs, attributes as in ONNX Runtime's ContribOperators.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MS_DOMAIN = "com.microsoft"


# --- eager reference math (also the semantics the exported node must have) ------------------------
def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE; x: (B, h, T, hd), cos/sin: (T, hd/2) as GroupQueryAttention's caches."""
    cos, sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)  # (T, hd)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


@torch.library.custom_op("smolship_ort::gqa", mutates_args=())
def gqa(qkv: Tensor, past_k: Tensor, past_v: Tensor, seqlens_k: Tensor, total_len: Tensor,
        cos_cache: Tensor, sin_cache: Tensor, num_heads: int, kv_num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """GroupQueryAttention with a shared KV buffer (batch 1, no padding).

    qkv: (1, T, (nh + 2 nkv) hd); past_k/v: (1, nkv, S_max, hd) with the first ``total_len - T``
    slots valid; returns attn (1, T, nh hd) and the buffers with the T new keys/values written in.
    """
    b, t, _ = qkv.shape
    hd = past_k.shape[-1]
    total = int(total_len)
    start = total - t
    assert b == 1 and total <= past_k.shape[2], f"shared-buffer GQA needs batch 1 and total {total} <= {past_k.shape[2]}"
    assert int(seqlens_k[0]) == total - 1, "seqlens_k must be total_sequence_length - 1 (no padding)"
    q, k, v = qkv.split([num_heads * hd, kv_num_heads * hd, kv_num_heads * hd], dim=-1)
    q = q.view(b, t, num_heads, hd).transpose(1, 2)  # (B, nh, T, hd)
    k = k.view(b, t, kv_num_heads, hd).transpose(1, 2)  # (B, nkv, T, hd)
    v = v.view(b, t, kv_num_heads, hd).transpose(1, 2)
    cos, sin = cos_cache[start:total], sin_cache[start:total]
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    present_k, present_v = past_k.clone(), past_v.clone()
    present_k[:, :, start:total], present_v[:, :, start:total] = k, v
    rep = num_heads // kv_num_heads
    keys = present_k[:, :, :total].repeat_interleave(rep, dim=1)  # (B, nh, total, hd)
    values = present_v[:, :, :total].repeat_interleave(rep, dim=1)
    pos = torch.arange(start, total)
    mask = torch.arange(total)[None, :] <= pos[:, None]  # (T, total)
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    return y.transpose(1, 2).reshape(b, t, num_heads * hd), present_k, present_v


@gqa.register_fake
def _gqa_fake(qkv, past_k, past_v, seqlens_k, total_len, cos_cache, sin_cache, num_heads, kv_num_heads):
    b, t, _ = qkv.shape
    return qkv.new_empty(b, t, num_heads * past_k.shape[-1]), torch.empty_like(past_k), torch.empty_like(past_v)


@torch.library.custom_op("smolship_ort::skip_rms_norm", mutates_args=())
def skip_rms_norm(x: Tensor, skip: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(RMSNorm(x + skip) * weight, x + skip), computed in fp32 like the reference RMSNorm."""
    s = x + skip
    h = s.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(s.dtype), s


@skip_rms_norm.register_fake
def _skip_rms_norm_fake(x, skip, weight, eps):
    return torch.empty_like(x), torch.empty_like(x)


# --- ONNX schemas and translations -------------------------------------------------------------
def register_onnx_schemas() -> None:
    """Declare the contrib ops we emit to the onnx package (idempotent)."""
    import onnx
    from onnx.defs import OpSchema

    def has(name: str) -> bool:
        try:
            onnx.defs.get_schema(name, 1, MS_DOMAIN)
            return True
        except onnx.defs.SchemaError:
            return False

    P, opt = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    fp = ["tensor(float)", "tensor(float16)"]
    INT, FLOAT = OpSchema.AttrType.INT, OpSchema.AttrType.FLOAT
    if not has("GroupQueryAttention"):
        onnx.defs.register_schema(OpSchema(
            "GroupQueryAttention", MS_DOMAIN, 1,
            inputs=[P("query", "T"), P("key", "T", param_option=opt), P("value", "T", param_option=opt),
                    P("past_key", "T", param_option=opt), P("past_value", "T", param_option=opt),
                    P("seqlens_k", "M"), P("total_sequence_length", "M"),
                    P("cos_cache", "T", param_option=opt), P("sin_cache", "T", param_option=opt)],
            outputs=[P("output", "T"), P("present_key", "T"), P("present_value", "T")],
            type_constraints=[("T", fp, ""), ("M", ["tensor(int32)"], "")],
            attributes=[OpSchema.Attribute(n, t) for n, t in
                        (("num_heads", INT), ("kv_num_heads", INT), ("do_rotary", INT), ("rotary_interleaved", INT))],
        ))
    if not has("SkipSimplifiedLayerNormalization"):
        onnx.defs.register_schema(OpSchema(
            "SkipSimplifiedLayerNormalization", MS_DOMAIN, 1,
            inputs=[P("input", "T"), P("skip", "T"), P("gamma", "T")],
            outputs=[P("output", "T"), P("mean", "U", param_option=opt), P("inv_std_var", "U", param_option=opt),
                     P("input_skip_bias_sum", "T", param_option=opt)],
            type_constraints=[("T", fp, ""), ("U", ["tensor(float)"], "")],
            attributes=[OpSchema.Attribute("epsilon", FLOAT)],
        ))


def translations() -> dict:
    """custom_translation_table for torch.onnx.export: custom op -> onnxscript function."""
    import onnxscript

    register_onnx_schemas()
    ms = onnxscript.values.Opset(MS_DOMAIN, 1)

    def gqa_onnx(qkv, past_k, past_v, seqlens_k, total_len, cos_cache, sin_cache, num_heads: int, kv_num_heads: int):
        return ms.GroupQueryAttention(qkv, None, None, past_k, past_v, seqlens_k, total_len, cos_cache, sin_cache,
                                      num_heads=num_heads, kv_num_heads=kv_num_heads, do_rotary=1, rotary_interleaved=0)

    def skip_rms_norm_onnx(x, skip, weight, eps: float):
        out, _mean, _inv, total = ms.SkipSimplifiedLayerNormalization(x, skip, weight, epsilon=eps)
        return out, total

    return {torch.ops.smolship_ort.gqa.default: gqa_onnx,
            torch.ops.smolship_ort.skip_rms_norm.default: skip_rms_norm_onnx}
