"""Quantization recipes as data, applied by building torchao weight tensors that XNNPACK lowers.

A `QuantPlan` says, for every linear (by regex on its name, first match wins) and for the token
embedding, which `LinearScheme` / `EmbeddingScheme` it gets. Weights become torchao
``IntxUnpackedToInt8Tensor``s whose integer values and scales we choose ourselves (so they can be
checked and searched), and torch.export turns them into the ``dequantize_affine`` (+ dynamic
per-token activation quantization) patterns that XNNPACK's partitioner claims:

============  =========================================  ===================================
scheme        XNNPACK kernel                             weights
============  =========================================  ===================================
``8da4w``     qd8-f32-qb4w (int8 dyn. act. x int4 blk)   symmetric int4, groups of 32, bf16
              + f32-qc8w side linear (block offsets)     scales; offsets make it asymmetric
``8da8w``     qd8-f32-qc8w                               symmetric int8 per output channel
``w8``        f32-qc8w (weight-only, fp32 activations)   symmetric int8 per output channel
============  =========================================  ===================================

XNNPACK's blockwise int4 kernel has no zero points. Weights that sit on an asymmetric grid (the
default model's came from a Q4_1 GGUF: ``w = d*q + m`` per block of 32) are written as
``s*(q - 8) + c`` with ``s`` the block scale and ``c`` a per-block offset; ``c`` is applied by a
small side linear over per-block means of the input (`BlockOffsetLinear`). That reproduces the
Q4_1 grid almost exactly (the only loss is ``s`` rounded to bf16, which XNNPACK stores anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from smolship.exporter.naming import FUSED, NORM_FED
from smolship.quant.gptq import gptq
from smolship.quant.rules import Rule, first_match
from smolship.quant.grids import Grid, affine_minmax, affine_search, blocks_of, round_bf16, symmetric_search

BF16_EPS = 2.0 ** -8


@dataclass(frozen=True)
class LinearScheme:
    name: str  # "8da4w" | "8da8w" | "w8"
    bits: int
    group_size: int  # 0 = one scale per output channel
    dynamic_activations: bool  # int8 per-token activations (qd8 kernels) or fp32 (weight-only)
    block_offsets: bool = False  # asymmetric int4 through `BlockOffsetLinear`
    scale_search: bool = True  # MSE-optimal clipping per group / channel
    gptq: bool = False  # per-channel int8 rounded by GPTQ when calibration Hessians are at hand
    offset_block: int = 32  # block of the offsets when the main grid is per channel (group_size 0)
    residual: bool = False  # a second int8 plane for what the first rounds away (`ResidualLinear`)
    grid_search: bool = False  # 4-bit offsets: importance-weighted float-zero search (+ GPTQ), for weights on no grid

    @property
    def reads_statistics(self) -> bool:
        """GPTQ reads the calibration Hessian; the 4-bit grid search, each input channel's importance."""
        return self.gptq or self.grid_search

    @property
    def block(self) -> int:
        """Input block that shares one offset (`BlockOffsetLinear`)."""
        return self.group_size or self.offset_block


@dataclass(frozen=True)
class EmbeddingScheme:
    bits: int  # 8 -> quantized_decomposed::embedding_byte, 4 -> embedding_4bit
    group_size: int  # 0 = per row
    asymmetric: bool


W8DA4 = LinearScheme("8da4w", bits=4, group_size=32, dynamic_activations=True, block_offsets=True)
# Scale search cuts int8 per-channel MSE by only ~2% on SmolLM2 weights (measured) for 15x the time.
W8DA8 = LinearScheme("8da8w", bits=8, group_size=0, dynamic_activations=True, scale_search=False, gptq=True)
W8 = LinearScheme("w8", bits=8, group_size=0, dynamic_activations=False, scale_search=False, gptq=True)
# Symmetric int4 straight onto qb4w: no side linear (fewer kernel calls per token), but weights on an
# asymmetric grid (the default model's Q4_1 blocks) lose their offsets; a knob for `rules`.
W8DA4_SYM = replace(W8DA4, name="8da4w-sym", block_offsets=False)
W8_RTN = replace(W8, name="w8-rtn", gptq=False)  # no calibration pass: round to nearest
W8DA8_RTN = replace(W8DA8, name="8da8w-rtn", gptq=False)
# Per-channel int8 of the weights minus their block means (+ the means through a side linear): one
# scale per row has to span only each block's spread, not the offsets between blocks.
W8DA8_OFF = replace(W8DA8, name="8da8w-off", block_offsets=True)
W8_OFF = replace(W8, name="w8-off", block_offsets=True)
# Two weight-only int8 planes (w ~= s1*q1 + s2*q2, ~15 bits per channel) for the tied lm_head: one
# scale per row cannot hold the per-block scales of a Q8_0 source matrix, and the head's rounding
# was ~0.001 of the 8-bit recipes' kld_mean (eager, 2,048 tokens: int8 0.0039 -> 0.0030 with a float head).
W8X2 = replace(W8, name="w8x2", residual=True)
# 8da4w for weights on no grid (issue 19): the block grid searched with importance weights, codes by GPTQ.
W8DA4_GPTQ = replace(W8DA4, name="8da4w-gptq", grid_search=True, gptq=True)
# ... the search alone (importance = the Hessian's diagonal, codes rounded to nearest): GPTQ on a few
# thousand held-out tokens over-fits them (ONNX eager screen off the grid: offset-search 0.102, offset-gptq 0.175).
W8DA4_SEARCH = replace(W8DA4, name="8da4w-search", grid_search=True)
SCHEMES = {s.name: s for s in (W8DA4, W8DA4_SYM, W8DA8, W8DA8_RTN, W8, W8_RTN, W8DA8_OFF, W8_OFF, W8X2, W8DA4_GPTQ,
                               W8DA4_SEARCH)}
# Groups of 32 hold a Q8_0 source embedding exactly (one scale per row cannot); +3.5 MB of scales.
EMB8 = EmbeddingScheme(bits=8, group_size=32, asymmetric=False)
# Group 64 (not 32): the fp16 scales and zero points of a 49k x 576 table are 3.5 MB at 32, and the
# 8da4w bundle of the default model must stay under 110 MB (eager kld_mean 0.0255 -> 0.0293 on 2,048 tokens).
EMB4 = EmbeddingScheme(bits=4, group_size=64, asymmetric=True)


@dataclass(frozen=True)
class QuantPlan:
    """rules: `Rule` (regex on the linear's name, a LinearScheme or None = keep fp32); first match wins."""

    rules: tuple[Rule, ...] = ()
    embedding: EmbeddingScheme | None = None
    smooth_alpha: float | None = None  # SmoothQuant folded into the norms before int8 dynamic activations
    notes: dict = field(default_factory=dict)

    def wants_statistics(self) -> bool:
        """Whether any scheme reads calibration statistics (GPTQ's Hessian, or the grid search's importance)."""
        return any(s is not None and s.reads_statistics for _, s in self.rules)

    def scheme_for(self, name: str) -> LinearScheme | None:
        return first_match(self.rules, name, None)

    def describe(self) -> dict:
        return {
            "linears": [{"match": p, "scheme": s.name if s else "fp32", **({"bits": s.bits, "group_size": s.group_size,
                         "dynamic_activations": s.dynamic_activations, "block_offsets": s.block_offsets}
                         if s else {})} for p, s in self.rules],
            "embedding": None if self.embedding is None else {"bits": self.embedding.bits,
                                                              "group_size": self.embedding.group_size,
                                                              "asymmetric": self.embedding.asymmetric},
            "smooth_alpha": self.smooth_alpha,
            "gptq": any(s is not None and s.gptq for _, s in self.rules),
            **self.notes,
        }


# ---------------------------------------------------------------------------------- integer grids

def symmetric_grid(w: Tensor, bits: int, group_size: int, search: bool, bf16_scales: bool,
                   importance: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(q int8 [out, in], scale [out, n_groups]): the shared core's symmetric grid with scale search."""
    return symmetric_search(w, bits, group_size, search, bf16_scales, importance)


def asymmetric_int4_as_symmetric(w: Tensor, group_size: int, importance: Tensor | None = None,
                                 hessian: Tensor | None = None, search: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """w ~= s*(q - 8) + c per block: (q-8 int8 [out, in], s bf16-exact [out, nb], c [out, nb]).

    Default (search=False): min/max per block gives q exactly when `w` already sits on a 16-level affine
    grid (Q4_1); then c is the least-squares offset for the rounded scale. search=True (weights on no
    grid): the core's importance-weighted float-zero search, the scale rounded to bf16 keeping each
    block's offset, codes by GPTQ when a Hessian is given, and c the grid's own offset."""
    out_f, in_f = w.shape
    wg = blocks_of(w, group_size)  # (out, nb, g)
    if not search:
        grid = affine_minmax(wg, 4)
        q = grid.codes(wg) - 8  # (out, nb, g) in [-8, 7]
        s = round_bf16(grid.scale)
        c = (wg - s * q).mean(-1, keepdim=True)
        return q.reshape(out_f, in_f).to(torch.int8), s.squeeze(-1), c.squeeze(-1)
    grid = affine_search(wg, 4, importance)
    offset = -grid.zero * grid.scale
    s = round_bf16(grid.scale)
    grid = Grid(s, -offset / s, 0, 15)
    q = gptq(w, hessian, grid.column_rounder(group_size)).reshape(wg.shape) if hessian is not None else grid.codes(wg)
    c = s * (8 - grid.zero)  # s*(q - zero) = s*(q - 8) + c
    return (q - 8).reshape(out_f, in_f).to(torch.int8), s.squeeze(-1), c.squeeze(-1)


# ---------------------------------------------------------------------------------- torchao tensors

def intx_weight(q: Tensor, scale: Tensor, bits: int, group_size: int, dynamic_activations: bool,
                zero_point: Tensor | None = None, dtype: torch.dtype = torch.float32):
    """A torchao IntxUnpackedToInt8Tensor from chosen integers (q: int8 [out, in], scale [out, ng])."""
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
        IntxUnpackedToInt8TensorActivationQuantization as Act,
    )

    g = q.shape[1] if group_size == 0 else group_size
    scale = scale.reshape(q.shape[0], q.shape[1] // g)
    scale = scale if scale.dtype == torch.float16 else scale.float()
    zp = torch.zeros_like(scale, dtype=torch.int8) if zero_point is None else zero_point.reshape(scale.shape)
    return IntxUnpackedToInt8Tensor(q, scale, zp, getattr(torch, f"int{bits}"), (1, g), dtype,
                                    Act.INT8_ASYM_PER_TOKEN if dynamic_activations else None)


def _empty_linear(in_f: int, out_f: int) -> nn.Linear:
    return torch.nn.utils.skip_init(nn.Linear, in_f, out_f, bias=False)  # its weight is replaced at once


def _quantized_linear(w: Tensor, scheme: LinearScheme, hessian: Tensor | None = None) -> nn.Linear:
    q, s = symmetric_grid(w, scheme.bits, scheme.group_size, scheme.scale_search,
                          bf16_scales=scheme.group_size > 0)
    if hessian is not None and scheme.gptq and scheme.group_size == 0:
        from smolship.targets.executorch.gptq import gptq_per_channel

        q = gptq_per_channel(w, hessian, s.reshape(-1, 1), scheme.bits)
    lin = _empty_linear(w.shape[1], w.shape[0])
    lin.weight = nn.Parameter(intx_weight(q, s, scheme.bits, scheme.group_size, scheme.dynamic_activations),
                              requires_grad=False)
    return lin


class BlockOffsetLinear(nn.Module):
    """``y = x @ (s*(q-8))^T + mean_blocks(x) @ (g*c)^T``: asymmetric int4 on symmetric kernels.

    The block means are an fp32 matmul of the input, viewed as ``(.., n_blocks, g)``, with a
    ``[1, g]`` row of ``1/g`` (exact when g is a power of two): one small XNNPACK FC, where a 4-D
    ``mean`` (global average pooling) costs two layout transposes around it. The offset linear is
    weight-only int8 (f32-qc8w), so it adds no activation-quantization error of its own.
    """

    def __init__(self, main: nn.Linear, offsets: nn.Linear, group_size: int):
        super().__init__()
        self.main, self.offsets, self.group_size = main, offsets, group_size
        self.register_buffer("pool", mean_row(group_size), persistent=False)

    def block_means(self, x: Tensor) -> Tensor:
        b, _, n = x.shape  # token dim as -1: XNNPACK reshapes take one inferred dim, no symbols
        nb = n // self.group_size
        return nn.functional.linear(x.reshape(b, -1, nb, self.group_size), self.pool).reshape(b, -1, nb)

    def forward(self, x: Tensor, means: Tensor | None = None) -> Tensor:
        return self.main(x) + self.offsets(self.block_means(x) if means is None else means)


def mean_row(n: int) -> Tensor:
    """``[1, n]`` of ``1/n``: the weight of a mean as a matmul (XNNPACK stores equal constants once)."""
    return torch.full((1, n), 1.0 / n)


def _concat_linear(linears: list[nn.Linear]) -> nn.Linear | None:
    """One linear whose output rows are the given linears' rows in order (same input, same kind of
    weight), or None. Every scheme here quantizes row by row, so the result computes the same values."""
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import IntxUnpackedToInt8Tensor

    if any(type(m) is not nn.Linear or m.bias is not None for m in linears):
        return None
    ws = [m.weight for m in linears]
    if len({w.shape[1] for w in ws}) != 1:
        return None
    if all(isinstance(w, IntxUnpackedToInt8Tensor) for w in ws):
        kinds = {(w.target_dtype, tuple(w.block_size), w.dtype, w.activation_quantization,
                  w.scale.dtype, w.zero_point.dtype) for w in ws}
        if len(kinds) != 1:
            return None
        w0 = ws[0]
        weight = IntxUnpackedToInt8Tensor(torch.cat([w.qdata for w in ws]), torch.cat([w.scale for w in ws]),
                                          torch.cat([w.zero_point for w in ws]), w0.target_dtype,
                                          w0.block_size, w0.dtype, w0.activation_quantization)
    elif any(isinstance(w, IntxUnpackedToInt8Tensor) for w in ws) or len({w.dtype for w in ws}) != 1:
        return None
    else:
        weight = torch.cat([w.detach() for w in ws])
    lin = _empty_linear(ws[0].shape[1], sum(w.shape[0] for w in ws))
    lin.weight = nn.Parameter(weight, requires_grad=False)
    return lin


def concat_outputs(modules) -> nn.Module | None:
    """One module computing ``cat([m(x) for m in modules], -1)`` as one matmul (plus one offset
    matmul for `BlockOffsetLinear`s), or None when their schemes differ. q/k/v as one call saves
    XNNPACK two GEMMs, two offset FCs and two activation quantizations per layer."""
    if all(isinstance(m, BlockOffsetLinear) for m in modules):
        if len({m.group_size for m in modules}) != 1:
            return None
        main = _concat_linear([m.main for m in modules])
        offsets = _concat_linear([m.offsets for m in modules])
        return None if main is None or offsets is None else BlockOffsetLinear(main, offsets, modules[0].group_size)
    return _concat_linear(list(modules))


def apply_all(linears, x: Tensor) -> list[Tensor]:
    """``[m(x) for m in linears]``, with one block-mean computation shared by the `BlockOffsetLinear`s
    of equal group size (gate/up, and q/k/v where `concat_outputs` could not fuse them, read one input)."""
    means: dict[int, Tensor] = {}
    out = []
    for m in linears:
        if isinstance(m, BlockOffsetLinear):
            if m.group_size not in means:
                means[m.group_size] = m.block_means(x)
            out.append(m(x, means[m.group_size]))
        else:
            out.append(m(x))
    return out


def _block_offset_linear(w: Tensor, scheme: LinearScheme, hessian: Tensor | None = None,
                         importance: Tensor | None = None) -> BlockOffsetLinear:
    g = scheme.block
    main = _empty_linear(w.shape[1], w.shape[0])
    if scheme.bits == 4:
        q, s, c = asymmetric_int4_as_symmetric(w, g, importance, hessian if scheme.gptq else None,
                                               search=scheme.grid_search)
        main.weight = nn.Parameter(intx_weight(q, s, 4, g, scheme.dynamic_activations), requires_grad=False)
    else:  # per-channel grid over the residual of the block means
        c = w.reshape(w.shape[0], -1, g).mean(-1)  # (out, nb)
        main.weight = _quantized_linear(w - c.repeat_interleave(g, dim=1), scheme, hessian).weight
    off_w = c * g  # (out, nb): applied to block means
    qo, so = symmetric_grid(off_w, 8, 0, search=False, bf16_scales=False)
    offsets = _empty_linear(off_w.shape[1], off_w.shape[0])
    offsets.weight = nn.Parameter(intx_weight(qo, so, 8, 0, dynamic_activations=False), requires_grad=False)
    return BlockOffsetLinear(main, offsets, g)


class ResidualLinear(nn.Module):
    """``main(x) + residual(x)``: the residual linear holds what `main`'s int8 rounding lost."""

    def __init__(self, main: nn.Linear, residual: nn.Linear):
        super().__init__()
        self.main, self.residual = main, residual

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x) + self.residual(x)


def quantize_linear(w: Tensor, scheme: LinearScheme, hessian: Tensor | None = None,
                    importance: Tensor | None = None) -> nn.Module:
    """`hessian` (X^T X / n) feeds GPTQ; `importance` (mean x^2 per input channel) weights the 4-bit grid search."""
    w = w.detach().float()
    if scheme.block_offsets:
        return _block_offset_linear(w, scheme, hessian, importance)
    main = _quantized_linear(w, scheme, hessian)
    if not scheme.residual:
        return main
    lost = w - main.weight.dequantize().float()
    return ResidualLinear(main, _quantized_linear(lost, replace(scheme, gptq=False, residual=False)))


def quantize_embedding(emb: nn.Embedding, scheme: EmbeddingScheme) -> None:
    """In place: the embedding weight becomes an int tensor that ExecuTorch's quant fusion turns into
    ``quantized_decomposed::embedding_byte`` / ``embedding_4bit`` (kernels in executorch.kernels.quantized)."""
    w = emb.weight.detach().float()
    rows, dim = w.shape
    g = dim if scheme.group_size == 0 else scheme.group_size
    if scheme.asymmetric:
        # the core's min/max grid in signed codes (code - 2^(bits-1)); its scale stored as fp16 (half the
        # bytes of fp32) and its integer zero point anywhere an int8 holds
        qmin = -(2 ** (scheme.bits - 1))
        wg = blocks_of(w, g)
        grid = affine_minmax(wg, scheme.bits, integer_zero=True, stored=lambda s: s.clamp(min=1e-8).half().float(),
                             zero_range=(-128 - qmin, 127 - qmin))
        q, zp, s = grid.integer_codes(wg) + qmin, grid.zero + qmin, grid.scale
        # fp16 scales halve their bytes; ExecuTorch's kernel then wants fp16 zero points and output,
        # so the lookup returns fp16 rows and ExportLlama casts them to fp32.
        weight = intx_weight(q.reshape(rows, dim).to(torch.int8), s.squeeze(-1).half(), scheme.bits, scheme.group_size,
                             False, zero_point=zp.squeeze(-1).to(torch.int8), dtype=torch.float16)
    else:
        q, s = symmetric_grid(w, scheme.bits, scheme.group_size, search=False, bf16_scales=False)
        weight = intx_weight(q, s, scheme.bits, scheme.group_size, False)
    emb.weight = nn.Parameter(weight, requires_grad=False)


def linear_names(model) -> list[str]:
    return [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]


def apply_plan(model, plan: QuantPlan, calibration: list[list[int]] | None = None) -> dict:
    """Quantize `model` (an exporter.model.Llama) in place; returns {scheme: count} for the manifest.

    `calibration` (token lists) feeds GPTQ for the schemes that ask for it; without it they round
    to nearest."""
    counts: dict[str, int] = {}
    hessians: dict[str, Tensor] = {}
    importance: dict[str, Tensor] = {}
    readers = {n for n in linear_names(model) if (s := plan.scheme_for(n)) is not None and s.reads_statistics}
    if calibration and readers:
        from smolship.quant.stats import collect

        # one pass: every reader's importance (the grid search), Hessians only where GPTQ runs
        stats = collect(model, calibration, {n: n for n in readers},
                        hessian_keys={n for n in readers if plan.scheme_for(n).gptq})
        hessians, importance = stats.hessian, stats.importance
    if model.cfg.tie_word_embeddings and (plan.embedding is not None or plan.scheme_for("lm_head")):
        # The embedding lookup and the lm_head matmul run on different kernels with different
        # layouts, so each gets its own copy of the tied matrix.
        model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone(), requires_grad=False)
    for name in linear_names(model):
        scheme = plan.scheme_for(name)
        key = scheme.name if scheme else "fp32"
        counts[key] = counts.get(key, 0) + 1
        if scheme is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, quantize_linear(getattr(parent, child).weight, scheme, hessians.get(name),
                                               importance.get(name)))
    if plan.embedding is not None:
        quantize_embedding(model.embed_tokens, plan.embedding)
    return {"linears": counts, "embedding_bits": plan.embedding.bits if plan.embedding else 32,
            "gptq_linears": len(hessians)}


@torch.no_grad()
def fold_smoothing(model, scales: dict[str, Tensor]) -> int:
    """SmoothQuant, in place: for the norm-fed matrices, divide the RMSNorm weight by s and multiply
    the input columns of the matrices it feeds by s (the float model computes the same function).
    Large activation channels shrink before int8 dynamic activation rounding; `scales` come from
    exporter.calibration.smoothing_scales, keyed layers.{i}.qkv_proj / layers.{i}.gate_up_proj."""
    done = 0
    for i, layer in enumerate(model.layers):
        for fused, norm_name in NORM_FED.items():
            if (key := f"layers.{i}.{fused}") not in scales:
                continue
            norm = getattr(layer, norm_name)
            s = scales[key].to(norm.weight.dtype)
            norm.weight.copy_(norm.weight / s)
            for part in FUSED[fused]:
                m = layer.get_submodule(part)
                m.weight.copy_(m.weight * s)
            done += 1
    return done
