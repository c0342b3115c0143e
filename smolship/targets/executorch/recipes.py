"""The ExecuTorch recipes as data: each recipe's quantization plan, the measurements behind it, and the
typed knobs (`ExecuTorchKnobs`) a user may set on top (`plan_for`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from smolship.errors import SmolshipError
from smolship.quant.rules import Rule, bad_patterns
from smolship.targets.base import ExportOptions, Precision, Recipe
from smolship.targets.executorch import quantize as Q
from smolship.targets.knobs import knob, parse

RECIPES = {
    "fp32": Recipe("fp32", Precision.FP32, "fp32 weights and activations; XNNPACK fp32 GEMMs"),
    "8da8w": Recipe("8da8w", Precision.INT8, "int8 per-channel weights over block-mean offsets (GPTQ) with int8 "
                    "dynamic activations after SmoothQuant (v_proj, o_proj, down_proj weight-only), two-plane "
                    "int8 lm_head, 8-bit embedding"),
    "8da4w": Recipe("8da4w", Precision.INT4, "asymmetric int4 weights (groups of 32, importance-searched float zero) with int8 dynamic "
                    "activations, int8 lm_head (int8 dynamic activations), asymmetric 4-bit embedding"),
    "int8": Recipe("int8", Precision.INT8, "int8 per-channel weight-only linears (GPTQ; fp32 activations), "
                   "two-plane int8 lm_head, 8-bit embedding"),
}

# Which linears get which scheme, chosen by measurement on the default model (eager kld_mean on 2,048
# eval tokens, calibrated on held-out text): int8 activations of v_proj, o_proj and down_proj cost the
# most KL, so they stay float (0.0099 -> 0.0046 with SmoothQuant alpha 0.5 and GPTQ; alpha 0.3: 0.0058,
# 0.75: 0.0075). Per-channel int8 cannot hold the default model's blocks (Q4_1 layers, Q8_0 embedding):
# int8 of the weights minus their block means (8da8w-off / w8-off) takes 8da8w from 0.0044 to 0.0042
# (int8: no gain), and a second int8 plane on the tied lm_head (w8x2, +28 MB) 0.0042 -> 0.0034 and
# int8 0.0039 -> 0.0030, the same as a float head (teacher-forced eager figures, 2,048 tokens).
# 8da4w (benchmarks/executorch_front.py, the programs in executorch.runtime, 2,048 tokens): block offsets
# keep the Q4_1 grid (kld 0.029) where symmetric int4 re-rounds it (0.37; on q/k only: 0.060); an int4
# lm_head saves 11.5 MB but costs 0.029 -> 0.088 for a few % of decode speed, so it stays int8. With
# int8 dynamic activations (qd8-f32-qc8w) the head decodes 5% faster than weight-only (4,096 tokens:
# kld 0.0337 -> 0.0357, 176 -> 186 tok/s on 1 thread); GPTQ on it buys 0.0362 -> 0.0357 for 10 s of
# calibration, so it is rounded to nearest (export 112 s).
# Off the grid (issue 19; benchmarks/offgrid_screen.py, eager, int8 dynamic activations, 768 tokens): the
# min/max blocks give kld 0.331; the importance-weighted float-zero search (quant.grids.affine_search, the
# Hessian diagonal of held-out text as weights) 0.155, on the default model 0.0345 -> 0.0360 (its blocks
# are kept up to the bf16 scale rounding). GPTQ on top over-fits the held-out text (ONNX: 0.104 -> 0.138).
# 8-bit layers (quant/mixed.py) do not fit: this recipe is at 109 MB with two vocab-sized tables (the
# XNNPACK head cannot serve the embedding lookup). The front (offgrid_screen.py, off-grid, eager, 768 tokens;
# bench-results/offgrid_screen-et.json; MB from the bytes per weight: 4-bit 0.59, 8-bit 1.0):
#   this recipe                                      109.2 MB  kld 0.151 (0.147 with importance from the one
#                                                              statistics pass instead of the Hessian diagonal)
#   + the 8-bit rule layers (8da8w)                  ~115.8 MB       0.116  (over the 110 MB budget)
#   + the rule, lm_head 4-bit (searched) to pay      ~104.3 MB       0.148  (the head costs what the rule buys)
#   lm_head 4-bit alone                              ~97.7 MB        0.184
# so the default stays; `rules` / `lm_head` knobs reach the other points.
# Speed, in executorch.runtime beside optimum-executorch's 8da4w program in the same run (benchmarks/
# executorch_anchor.py, 2,048 tokens, 2026-12-02): default model 174 / 214 tok/s on 1 / 2 threads against 197 / 239
# (0.88x / 0.90x) at kld 0.032 against 0.49; off the grid 183 / 220 against 198 / 247 (0.92x / 0.89x) at kld 0.133
# against 0.63. The block offsets' side linear costs the speed and holds the fidelity.
# In executorch.runtime (benchmarks/offgrid_matrix.py, 2,048 tokens): off-grid 109.2 MB, kld 0.134, top-1 0.79.
PLANS = {
    "fp32": Q.QuantPlan(),
    "8da8w": Q.QuantPlan(rules=(Rule("lm_head", Q.W8X2), Rule(r".*\.(v_proj|o_proj|down_proj)", Q.W8_OFF),
                                Rule(r".*", Q.W8DA8_OFF)), embedding=Q.EMB8, smooth_alpha=0.5),
    "8da4w": Q.QuantPlan(rules=(Rule("lm_head", Q.W8DA8_RTN), Rule(r".*", Q.W8DA4_SEARCH)), embedding=Q.EMB4),
    "int8": Q.QuantPlan(rules=(Rule("lm_head", Q.W8X2), Rule(r".*", Q.W8)), embedding=Q.EMB8),
}

DEFAULT_MAX_PREFILL = 256


@dataclass(frozen=True)
class ExecuTorchKnobs:
    """ExportOptions.extra for ExecuTorch (plan_for applies the quantization ones)."""

    embedding_bits: int | None = knob(None, "4 | 8: bits of the quantized embedding (default: the recipe's)")
    lm_head: str | None = knob(None, "scheme of the lm_head: w8 | w8-rtn | w8x2 | 8da8w | 8da8w-rtn | 8da4w | 8da4w-sym | fp32")
    group_size: int | None = knob(None, "4-bit group size, a multiple of 32 dividing hidden and intermediate (default 32)")
    rules: list = knob([], "[[regex, scheme | 'fp32'], ...] on linear names, checked before the recipe's own rules")
    smooth_alpha: float | None = knob(None, "SmoothQuant alpha (0 = off; default: the recipe's)")
    max_prefill_len: int | None = knob(None, "tokens per forward call (default 256: it sizes the activation memory)")


def knobs_of(options: ExportOptions) -> ExecuTorchKnobs:
    return parse(ExecuTorchKnobs, options.extra, "executorch")


def max_prefill_len(options: ExportOptions) -> int:
    """Tokens per forward call (the prefill chunk): the max_prefill_len knob, at most the cache."""
    return min(knobs_of(options).max_prefill_len or DEFAULT_MAX_PREFILL, options.max_seq_len)


def scheme_named(name: str) -> Q.LinearScheme | None:
    if name == "fp32":
        return None
    if name not in Q.SCHEMES:
        raise SmolshipError(f"Unknown ExecuTorch linear scheme '{name}'.", f"Use one of: fp32, {', '.join(sorted(Q.SCHEMES))}.")
    return Q.SCHEMES[name]


def plan_for(recipe: Recipe, options: ExportOptions) -> Q.QuantPlan:
    """The recipe's plan with the user's knobs: keep_embeddings_fp, embedding_bits, lm_head, group_size,
    rules (checked before the recipe's own rules), smooth_alpha (0 = off)."""
    k = knobs_of(options)
    plan = PLANS[recipe.name]
    rules, embedding = list(plan.rules), plan.embedding
    if k.group_size is not None:
        rules = [Rule(p, replace(s, group_size=k.group_size) if s and s.bits == 4 else s) for p, s in rules]
    if k.embedding_bits is not None and embedding is not None:
        embedding = Q.EMB8 if k.embedding_bits == 8 else Q.EMB4
    if bad := bad_patterns(k.rules):
        raise SmolshipError(f"executorch rules: invalid regular expression {', '.join(bad)}.",
                            "Pass [[regex, scheme], ...] with regexes that fullmatch linear names, e.g. 'layers\\.0\\..*'.")
    user = [Rule(p, scheme_named(s)) for p, s in k.rules]
    if k.lm_head is not None:
        user.append(Rule("lm_head", scheme_named(k.lm_head)))
    if options.keep_embeddings_fp:
        user.insert(0, Rule("lm_head", None))
        embedding = None
    alpha = plan.smooth_alpha if k.smooth_alpha is None else (k.smooth_alpha or None)
    return replace(plan, rules=tuple(user + rules), embedding=embedding, smooth_alpha=alpha)
