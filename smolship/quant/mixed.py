"""Which layer matrices a 4-bit recipe keeps at 8 bits: one measured rule for every target (issue 19).

benchmarks/sensitivity.py quantizes one layer matrix at a time (4-bit float-zero blocks with an
importance-weighted search, the rest float) and scores it on the off-grid model. Per parameter, the
first and last decoder layers and the attention output projections (``o_proj``) cost the most kld;
the rest are within ~2x of each other (bench-results/sensitivity.json). So the rule is positional
and carries over to any depth: every matrix of the first and last layer, and every ``o_proj``, at 8
bits (15% of the 135M's layer weights). Greedy selection from the 135M table (18.4M parameters)
covers 0.051 of the single-matrix kld sum; this rule, 16.4M parameters, 0.043.

Each target names its weights its own way; `eight_bit_patterns` writes the rule for each naming.
"""

from __future__ import annotations

STYLES = ("fused", "state_dict", "module")  # ONNX fused graph weights, HF state-dict names, torch module paths


def eight_bit_layers(num_layers: int) -> tuple[int, ...]:
    """Decoder layers kept at 8 bits whole: the first and the last."""
    return tuple(sorted({0, num_layers - 1}))


def eight_bit_patterns(num_layers: int, style: str) -> list[str]:
    """Regexes (fullmatch) naming the 8-bit layer weights in `style`'s naming."""
    layers = "|".join(str(i) for i in eight_bit_layers(num_layers))
    if style == "fused":  # layers.N.qkv_proj / o_proj / gate_up_proj / down_proj
        return [rf"layers\.({layers})\.\w+", r"layers\.\d+\.o_proj"]
    if style == "state_dict":  # layers.N.self_attn.q_proj.weight ...
        return [rf"layers\.({layers})\.(self_attn|mlp)\.\w+_proj\.weight", r"layers\.\d+\.self_attn\.o_proj\.weight"]
    if style == "module":  # layers.N.self_attn.q_proj ...
        return [rf"layers\.({layers})\.(self_attn|mlp)\.\w+_proj", r"layers\.\d+\.self_attn\.o_proj"]
    raise ValueError(f"unknown naming style {style!r}; one of {STYLES}")
