"""The Core ML recipes: their names, how each stores every class of weight (`Plan`), and the
measurements behind them. quantize.py packs what a plan says; target.py runs the chain.

A `Plan` says how each class of weight is stored: the ``linear`` weights inside the decoder layers,
and the ``embedding`` (the token embedding, which is also the lm_head when tied, or the untied
lm_head). Norm weights, RoPE tables and the converter's zero biases are never touched. Schemes:
`Affine` (symmetric: coremltools' linear quantizer; asymmetric: uint blocks with fp16 offsets that
`quantize.asymmetric_blocks` computes) and `Palette` (k-means look-up tables); see quantize.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from smolship.quant.mixed import eight_bit_patterns
from smolship.quant.rules import Rule, first_match
from smolship.targets.base import ExportOptions, Precision, Recipe
from smolship.targets.coreml.naming import EMBEDDING, LINEAR, weight_class
from smolship.targets.knobs import knob, parse


@dataclass(frozen=True)
class Affine:
    bits: int  # 4 or 8
    block: int | None  # along the input axis; None = one scale per output channel
    symmetric: bool = True
    search: bool = False  # asymmetric: MSE search of each block's range + least-squares refit (smolship.quant)

    def describe(self) -> str:
        gran = f"per-block {self.block}" if self.block else "per-channel"
        return (f"{'' if self.symmetric else 'u'}int{self.bits} {gran}{'' if self.symmetric else ' + fp16 offset'}"
                f"{' (searched)' if self.search else ''}")


@dataclass(frozen=True)
class Palette:
    bits: int = 4
    group_size: int = 16  # output channels sharing one look-up table

    def describe(self) -> str:
        return f"{self.bits}-bit k-means LUT per {self.group_size} channels"


Scheme = Affine | Palette | None  # None = fp16


@dataclass(frozen=True)
class Plan:
    """How each weight is stored: `rules` (regex fullmatched on the state-dict name, first match wins)
    before the class defaults ``linear`` / ``embedding``; a rule's scheme may be None (fp16)."""

    linear: Scheme
    embedding: Scheme
    rules: tuple[Rule, ...] = ()  # scheme: a Scheme

    def scheme_for(self, param: str, cls: str) -> Scheme:
        return first_match(self.rules, param, {LINEAR: self.linear, EMBEDDING: self.embedding}[cls])

    def without_embedding(self) -> Plan:
        return Plan(self.linear, None, self.rules)

    def wants_importance(self) -> bool:
        """Whether a searched grid reads calibration statistics."""
        return any(isinstance(s, Affine) and s.search for s in (self.linear, self.embedding, *(r.scheme for r in self.rules)))

    def describe(self) -> dict:
        """{class: scheme text or None (fp16)} (+ "rules"): recorded in the manifest, read back by the structure check."""
        out = {LINEAR: self.linear and self.linear.describe(), EMBEDDING: self.embedding and self.embedding.describe()}
        if self.rules:
            out["rules"] = [[p, s and s.describe()] for p, s in self.rules]
        return out


def described_scheme(plan_info: dict, param: str, cls: str) -> str | None:
    """The scheme text a recorded plan (Plan.describe) gives `param`."""
    return first_match(plan_info.get("rules", []), param, plan_info.get(cls))


# What a rule upgrades a sensitive layer weight to: uint8 blocks of 32 with fp16 offsets. 255 levels over a Q4_1
# block's [min, max] contain its 16 (step d/17), so the default model stays exact, which per-channel int8 does
# not (it re-rounds the blocks: default-model kld 1e-5 -> 0.0007, top-1 0.998 -> 0.988); +2 MB over per-channel.
EIGHT_BIT = Affine(8, 32, symmetric=False)
EMBED_8BIT = Affine(8, 32)  # the tied embedding/lm_head is the most sensitive tensor: 8 bits, fine blocks
PLANS: dict[str, Plan] = {
    "fp16": Plan(None, None),
    "w8": Plan(Affine(8, None), EMBED_8BIT),
    # searched float-zero blocks + 8-bit first/last layers and o_proj (quant/mixed.py), for weights on no grid
    # (issue 19): off-grid model 106.4 MB, kld 0.075 (weights read back, 2,048 tokens). The recipe before was
    # min/max blocks without 8-bit layers (98 MB): the grid of ONNX's ``offset``, eager off-grid kld 0.29. The
    # default model's Q4_1 blocks stay exact (min/max is one search candidate). 3.6 MB of the budget is left.
    # Speed is not measured: the Core ML runtime exists only on macOS, and this project's machines run Linux.
    "w4": Plan(Affine(4, 32, symmetric=False, search=True), EMBED_8BIT),
    "pal4": Plan(Palette(4, 16), EMBED_8BIT),
}


RECIPES = (
    Recipe("fp16", Precision.FP16, "fp16 weights and compute"),
    Recipe("w8", Precision.INT8, "int8 per-channel linears, int8 per-block-32 embedding/lm_head"),
    Recipe("w4", Precision.INT4, "uint4 per-block-32 with fp16 offsets (importance-searched), first/last layers and "
                                 "o_proj as uint8 blocks, int8 embedding/lm_head"),
    Recipe("pal4", Precision.INT4, "4-bit k-means palettes per 16 output channels, int8 embedding/lm_head (slow)"),
)


@dataclass(frozen=True)
class CoreMLKnobs:
    """ExportOptions.extra for the Core ML target (checked by targets.knobs.parse before any work)."""

    eight_bit: list | None = knob(None, "regexes of layer weights (state-dict names) stored as uint8 blocks "
                                 "(default: the w4 recipe's own list)")
    grid_search: bool | None = knob(None, "4-bit blocks: importance-weighted search of each block's range on held-out text (w4 default: on)")


def plan_for(recipe: Recipe, options: ExportOptions, num_layers: int) -> Plan:
    plan = PLANS[recipe.name]
    k = parse(CoreMLKnobs, options.extra, "coreml")
    eight_bit = k.eight_bit
    if eight_bit is None and recipe.name == "w4":
        eight_bit = eight_bit_patterns(num_layers, "state_dict")
    if eight_bit:
        plan = replace(plan, rules=tuple(Rule(p, EIGHT_BIT) for p in eight_bit))
    if k.grid_search is not None and isinstance(plan.linear, Affine) and not plan.linear.symmetric:
        plan = replace(plan, linear=replace(plan.linear, search=k.grid_search))
    return plan.without_embedding() if options.keep_embeddings_fp else plan


def expected_compression(plan_info: dict, params) -> dict[str, str]:
    """{param: scheme} that the recorded plan (manifest target_info['plan']) compresses."""
    return {p: text for p in params if (cls := weight_class(p)) and (text := described_scheme(plan_info, p, cls))}
