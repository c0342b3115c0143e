"""The shared quantization core (smolship/quant) and the one calibration-text policy."""

from __future__ import annotations

import pytest
import torch

from smolship.exporter.calibration import HELD_OUT_DOCS, calibration_set, held_out_docs
from smolship.quant import affine_minmax, affine_search, blocks_of, collect, gptq, symmetric_search
from smolship.quant.grids import Grid
from smolship.quant.rules import Rule
from smolship.evalset import load_eval

DEFAULT_EVAL_TOKENS = 4096  # the CLI's --eval-tokens default (cli/common.py)


def on_grid(n=8, k=64, bs=32, seed=0) -> torch.Tensor:
    """Weights exactly on a Q4_1-like grid: w = d*q + m per block."""
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(n, k // bs, 1, generator=g) * 0.02 + 0.001
    m = -torch.rand(n, k // bs, 1, generator=g) * 0.1
    q = torch.randint(0, 16, (n, k // bs, bs), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # the block's min and max are on the grid ends, as in a Q4_1 file
    return (d * q + m).reshape(n, k)


def weighted_err(w, deq, imp):
    return float((((deq - w) ** 2) * imp).sum())


def test_affine_minmax_reproduces_an_affine_grid():
    w = on_grid()
    b = blocks_of(w, 32)
    grid = affine_minmax(b, 4)
    torch.testing.assert_close(grid.dequant(grid.codes(b)), b, atol=1e-6, rtol=0)  # float32 arithmetic only


def test_affine_search_beats_minmax_off_grid():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 128, generator=g)
    imp = torch.rand(128, generator=g) ** 4 + 1e-3  # a few loud channels, as real activations have
    b = blocks_of(w, 32)
    for integer_zero in (False, True):
        base = affine_minmax(b, 4, integer_zero=integer_zero, include_zero=integer_zero)
        best = affine_search(b, 4, imp, integer_zero=integer_zero)
        wimp = imp.reshape(1, -1, 32)
        e0 = weighted_err(b, base.dequant(base.codes(b)), wimp)
        e1 = weighted_err(b, best.dequant(best.codes(b)), wimp)
        assert e1 < 0.9 * e0, (integer_zero, e0, e1)


@pytest.mark.parametrize("bits", [4, 8])
def test_symmetric_search_per_bit_width(bits):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, 64, generator=g)
    q, s = symmetric_search(w, bits, 32, search=True, bf16_scales=False)
    qmax = 2 ** (bits - 1) - 1
    assert int(q.max()) <= qmax and int(q.min()) >= -qmax - 1
    rel = float(((q.float().reshape(16, 2, 32) * s[..., None]).reshape(16, 64) - w).pow(2).mean() / w.pow(2).mean())
    assert rel < {4: 0.02, 8: 1e-4}[bits]  # ~uniform rounding noise: (step^2 / 12) / var(w)


def test_gptq_lowers_output_error_on_a_fixed_grid():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)  # correlated inputs
    h = x.t() @ x / x.shape[0]
    w = torch.randn(32, 64, generator=g)
    b = blocks_of(w, 32)
    grid = affine_search(b, 4, torch.diagonal(h))
    rtn = grid.dequant(grid.codes(b)).reshape(32, 64)
    codes = gptq(w, h, grid.column_rounder(32))
    q = grid.dequant(blocks_of(codes, 32)).reshape(32, 64)
    out_err = lambda wq: float(((x @ (wq - w).t()) ** 2).mean())  # noqa: E731
    assert out_err(q) < 0.8 * out_err(rtn)
    assert torch.equal(codes, codes.round()) and codes.min() >= 0 and codes.max() <= 15


def test_collector_measures_the_inputs(tiny_model):
    model = tiny_model.build(max_seq_len=64)
    seqs = [[1, 5, 9, 200, 7, 3], [4, 4, 8]]
    seen = []
    hook = model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    # measured here, not served from the results cache (another test may have stored this entry)
    stats = collect(model, seqs, {"down": "layers.0.mlp.down_proj"}, hessian_keys={"down"}, use_cache=False)
    hook.remove()
    x = torch.cat(seen).double()
    assert stats.tokens == 9
    torch.testing.assert_close(stats.importance["down"], (x * x).mean(0).float())
    torch.testing.assert_close(torch.diagonal(stats.hessian["down"]), stats.importance["down"])


@pytest.mark.parametrize("target", ["onnx", "executorch"])
def test_targets_share_the_core_grid(target):
    """The ONNX offset blocks and ExecuTorch's block offsets reproduce the same on-grid weight (one grid)."""
    w = on_grid(16, 64)
    if target == "onnx":
        from smolship.targets.onnx.blockquant import BlockQuant, grid_and_codes

        grid, codes = grid_and_codes(w, BlockQuant(4, 32, False, "offset"))
        deq = grid.dequant(codes).reshape(w.shape)
        tol = 1e-6
    else:
        pytest.importorskip("executorch")
        from smolship.targets.executorch.quantize import asymmetric_int4_as_symmetric

        q, s, c = asymmetric_int4_as_symmetric(w, 32)
        deq = (q.float().reshape(16, 2, 32) * s[..., None] + c[..., None]).reshape(w.shape)
        tol = float(w.abs().max()) * 2 ** -7  # the block scale is stored in bf16
    torch.testing.assert_close(deq, w, atol=tol, rtol=0)


def test_calibration_never_sees_the_default_parity_text(tiny_model):
    tok = tiny_model.tokenizer
    scored = {d.id for d in load_eval(tok, max_tokens=DEFAULT_EVAL_TOKENS)}
    held = {d.id for d in held_out_docs(tok)}
    assert len(held) == HELD_OUT_DOCS and not scored & held, sorted(scored & held)
    for doc_tokens in (256, 512):  # ONNX / ExecuTorch pieces, GGUF imatrix chunks
        cal = calibration_set(tiny_model, None, 4096, doc_tokens=doc_tokens)
        assert set(cal.record["documents"]) <= held and not set(cal.record["documents"]) & scored
        assert cal.record["tokens"] == sum(map(len, cal.sequences)) > 2048
        scored_ids = {tuple(d.ids[:64]) for d in load_eval(tok, max_tokens=DEFAULT_EVAL_TOKENS)}
        assert not any(tuple(s[:64]) in scored_ids for s in cal.sequences)
    user = calibration_set(tiny_model, "Some user text. " * 200, 1000, doc_tokens=128)
    assert user.record == {"text": "ExportOptions.calibration_text", "tokens": sum(map(len, user.sequences))}
    assert user.record["tokens"] <= 1000


def test_grid_column_rounder_matches_codes():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(8, 64, generator=g)
    grid: Grid = affine_search(blocks_of(w, 32), 4)
    rnd = grid.column_rounder(32)
    codes = torch.stack([rnd(j, w[:, j])[0] for j in range(64)], 1)
    assert torch.equal(codes, grid.codes(blocks_of(w, 32)).reshape(8, 64))


# --- mixed precision: one rule (quant/mixed.py), each target's naming -----------------------------------
def _names(style: str, tiny_model, num_layers: int) -> list[str]:
    """Every layer weight name a target quantizes, in its naming, for a model of `num_layers` layers."""
    import re

    if style == "fused":  # the ONNX graph's fused weights
        return [f"layers.{i}.{u}" for i in range(num_layers) for u in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")]
    if style == "state_dict":  # Core ML's parameter names
        per_layer = [k.split(".", 2)[2] for k in tiny_model.state_dict if k.startswith("layers.0.") and "_proj" in k]
    else:  # ExecuTorch's module paths
        from smolship.targets.executorch.quantize import linear_names

        per_layer = [n.split(".", 2)[2] for n in linear_names(tiny_model.build(max_seq_len=8)) if n.startswith("layers.0.")]
    assert len(per_layer) == 7 and all(re.fullmatch(r"(self_attn|mlp)\.\w+_proj(\.weight)?", p) for p in per_layer)
    return [f"layers.{i}.{p}" for i in range(num_layers) for p in per_layer]


@pytest.mark.parametrize("style", ["fused", "state_dict", "module"])
def test_eight_bit_rule_names_the_same_matrices_in_every_naming(style, tiny_model):
    import re

    from smolship.quant.mixed import eight_bit_patterns

    names = _names(style, tiny_model, 30)
    chosen = {n for n in names if any(re.fullmatch(p, n) for p in eight_bit_patterns(30, style))}
    layer = lambda n: int(n.split(".")[1])  # noqa: E731
    assert {n for n in chosen if layer(n) in (0, 29)} == {n for n in names if layer(n) in (0, 29)}
    middle = {n for n in chosen if layer(n) not in (0, 29)}
    assert middle and all("o_proj" in n for n in middle) and len(middle) == 28  # one o_proj per middle layer


def test_every_layer_weight_has_its_statistic(tiny_model):
    """calibration.stats_key maps state-dict names onto collect()'s keys (Core ML reads importance through it)."""
    from smolship.exporter.calibration import calibration_set, collect, stats_key

    stats = collect(tiny_model, calibration_set(tiny_model, None, 256).sequences, want_hessian=False)
    layer_weights = [p for p in tiny_model.state_dict if p.startswith("layers.") and p.endswith("_proj.weight")]
    assert len(layer_weights) == 7 * tiny_model.config.num_layers
    for p in layer_weights:
        assert stats_key(p) in stats.importance, p
        assert stats.importance[stats_key(p)].shape[0] == tiny_model.state_dict[p].shape[1], p  # its input width
    assert stats_key("lm_head.weight") == "lm_head" and stats_key("embed_tokens.weight") is None


def test_first_match_fullmatches_and_the_first_rule_wins():
    from smolship.quant.rules import bad_patterns, first_match

    rules = [("lm_head", "head"), (r"layers\.0\.\w+", "eight"), (r"layers\.\d+\.o_proj", None), (r".*", "four")]
    assert first_match(rules, "lm_head") == "head"
    assert first_match(rules, "lm_head_2") == "four"  # fullmatch: "lm_head" does not claim a longer name
    assert first_match(rules, "layers.0.o_proj") == "eight"  # first wins over the o_proj rule
    assert first_match(rules, "layers.3.o_proj") is None  # a rule may keep a weight float
    assert first_match(rules[:1], "embed", default="float") == "float"
    with pytest.raises(KeyError):
        first_match(rules[:1], "embed")
    assert bad_patterns([("ok", 1), ("(unclosed", 2)]) == ["'(unclosed' (missing ), unterminated subpattern at position 0)"]


def _target_lookup(target: str):
    """(rules [(regex, tag)] -> name -> tag) through each target's own plan type."""
    if target == "onnx":
        from smolship.targets.onnx.blockquant import BlockQuant
        from smolship.targets.onnx.quantize import QuantPlan

        cfgs = {}

        def lookup(rules, name):
            plan = QuantPlan(rules=tuple(Rule(p, cfgs.setdefault(t, BlockQuant(4, 16 * (i + 1))))
                                         for i, (p, t) in enumerate(rules)))
            found = plan.config_for(name)
            return next((t for t, c in cfgs.items() if c == found), None)
        return lookup
    if target == "executorch":
        from dataclasses import replace

        from smolship.targets.executorch import quantize as Q

        def lookup(rules, name):
            plan = Q.QuantPlan(rules=tuple(Rule(p, replace(Q.W8DA4, name=t)) for p, t in rules))
            found = plan.scheme_for(name)
            return found.name if found else None
        return lookup
    coreml = pytest.importorskip("smolship.targets.coreml.recipes")

    def lookup(rules, name):
        plan = coreml.Plan(None, None, tuple(Rule(p, coreml.Affine(4, 16 * (i + 1))) for i, (p, _) in enumerate(rules)))
        found = plan.scheme_for(name, "linear")
        return None if found is None else rules[found.block // 16 - 1][1]
    return lookup


@pytest.mark.parametrize("target", ["onnx", "executorch", "coreml"])
def test_every_target_reads_rule_tables_the_same_way(target):
    """One matching rule (quant/rules.first_match) behind each target's plan type: fullmatch, first wins."""
    lookup = _target_lookup(target)
    rules = [("lm_head", "head"), (r"layers\.0\.\w+", "eight"), (r"layers\.\d+\.\w+", "four")]
    assert lookup(rules, "lm_head") == "head"
    assert lookup(rules, "layers.0.o_proj") == "eight"
    assert lookup(rules, "layers.7.o_proj") == "four"
    assert lookup(rules, "lm_head.weight") is None  # no partial matches
