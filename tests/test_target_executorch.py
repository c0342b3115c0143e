"""ExecuTorch target: real `.pte` files run in executorch.runtime (and ExecuTorch's C++ LLM runner).

Fast tests use random:tiny with a 128-slot cache and a 64-token prefill bound; slow tests export
the real 135M. Every check runs the artifact in its runtime; nothing here mocks ExecuTorch.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("executorch")

from smolship.errors import SmolshipError  # noqa: E402
from smolship.export import export_bundle  # noqa: E402
from smolship.generate import generate  # noqa: E402
from smolship.runner import ReferenceRunner  # noqa: E402
from smolship.targets import ExportOptions, get_target  # noqa: E402
from smolship.targets.executorch import quantize as Q  # noqa: E402

CACHE, PREFILL = 128, 64
TINY = ExportOptions(max_seq_len=CACHE, extra={"max_prefill_len": PREFILL})


@pytest.fixture(scope="module")
def target():
    return get_target("executorch")


@pytest.fixture(scope="module")
def fp32_bundle(tiny_model, tiny_validator, tmp_path_factory, target):
    out = tmp_path_factory.mktemp("et")
    return export_bundle(tiny_model, "executorch", target.recipes["fp32"], out, TINY, validator=tiny_validator)


@pytest.fixture(scope="module")
def fp32_runner(fp32_bundle, target):
    path, manifest = fp32_bundle
    runner = target.load_runner(path, manifest)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def reference(tiny_model):
    return ReferenceRunner.from_source(tiny_model, max_seq_len=CACHE)


def test_package_imports_without_executorch():
    code = "import sys, smolship.targets.executorch; print('executorch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fp32_bundle_matches_reference(fp32_bundle):
    path, manifest = fp32_bundle
    assert manifest["model_files"] == ["model.pte"]
    assert {"model.pte", "tokenizer.json", "manifest.json"} <= {p.name for p in path.iterdir()}
    v = manifest["validation"]
    # fp32 XNNPACK GEMMs sum in a different order than torch: ~1e-6 on logits of magnitude ~5.
    assert v["max_abs_logit_diff"] < 1e-4, v
    assert v["kld_mean"] < 1e-8 and v["top1_agreement"] == 1.0
    assert v["greedy_match"] == v["greedy_tokens"]


def test_attention_and_cache_use_custom_ops(fp32_bundle):
    info = fp32_bundle[1]["target_info"]["delegation"]
    portable = info["non_delegated_op_types"]
    n_layers = fp32_bundle[1]["config"]["num_layers"]
    assert portable.get("custom_sdpa") == n_layers and portable.get("update_cache") == 2 * n_layers
    for slow_op in ("index_put", "index_copy", "expand_copy", "bmm", "_softmax", "mean", "linear"):
        assert slow_op not in portable, portable
    assert info["xnnpack_op_types"]["linear"] >= 7 * n_layers
    # norms and RoPE stay inside XNNPACK: the custom ops cut each layer once, so about one partition
    # per layer (+ the ends), not one per op (330 before the swaps in ops.py)
    assert info["xnnpack_delegates"] <= n_layers + 2


def test_constant_methods_follow_the_llm_runner_contract(fp32_runner, tiny_model):
    tok = tiny_model.tokenizer
    expected = {
        "get_max_seq_len": PREFILL,
        "get_max_context_len": CACHE,
        "get_vocab_size": tiny_model.config.vocab_size,
        "use_kv_cache": True,
        "enable_dynamic_shape": True,
        "get_bos_id": tok.bos_id,
    }
    for name, value in expected.items():
        assert fp32_runner.constant(name) == [value], name
    assert list(fp32_runner.constant("get_eos_ids")) == list(tok.stop_ids)


@pytest.mark.parametrize("n", [1, 5, PREFILL, PREFILL + 37])  # one call up to the bound, chunks beyond
def test_dynamic_prefill_lengths_match_reference(fp32_runner, reference, n):
    ids = [int(i) for i in np.random.default_rng(n).integers(3, 40000, size=n)]
    got, want = fp32_runner.prefill(ids), reference.prefill(ids)
    assert got.shape == (n, reference.model.cfg.vocab_size)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)  # fp32 vs fp32, summation order only


def test_decode_loop_matches_teacher_forced_reference(fp32_runner, reference):
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 40000, size=24)]
    want = reference.prefill(ids)
    rows = [fp32_runner.prefill(ids[:8])] + [fp32_runner.decode(t)[None] for t in ids[8:]]
    np.testing.assert_allclose(np.concatenate(rows), want, atol=1e-4, rtol=0)
    # a new prefill forgets the old sequence even though the cache buffers are not cleared
    np.testing.assert_allclose(fp32_runner.prefill(ids[5:9]), reference.prefill(ids[5:9]), atol=1e-4, rtol=0)


def test_cache_bound_is_enforced(fp32_runner):
    with pytest.raises(SmolshipError, match="KV cache holds 128"):
        fp32_runner.prefill(list(range(3, 3 + CACHE + 1)))
    fp32_runner.prefill(list(range(3, 3 + CACHE - 1)))
    fp32_runner.decode(7)  # fills the last slot
    with pytest.raises(SmolshipError):
        fp32_runner.decode(7)


def test_executorch_llm_runner_generates_the_same_tokens(fp32_bundle, fp32_runner, tiny_model):
    """The C++ TextLLMRunner of the demo apps loads model.pte + the bundle's tokenizer.json."""
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    path, _ = fp32_bundle
    prompt = "The quick brown fox jumps over the lazy dog"
    pieces: list[str] = []
    llm = TextLLMRunner(str(path / "model.pte"), str(path / "tokenizer.json"))
    llm.generate(prompt, GenerationConfig(echo=False, max_new_tokens=12, temperature=0.0), pieces.append)
    ids = tiny_model.tokenizer.encode(prompt)
    ours = list(generate(fp32_runner, ids, 12, stop_ids=tiny_model.tokenizer.stop_ids))
    assert "".join(pieces) == tiny_model.tokenizer.decode(ours)


@pytest.mark.parametrize("recipe", ["8da4w", "8da8w", "int8"])
def test_quantized_program_equals_its_eager_model(tiny_model, tmp_path, target, recipe):
    """The .pte runs exactly the quantized model we built (XNNPACK vs torchao reference math)."""
    from smolship.targets.executorch.ops import ExportLlama
    from smolship.targets.executorch.recipes import PLANS
    from smolship.targets.executorch.target import calibrate

    result = target.export(tiny_model, target.recipes[recipe], tmp_path, TINY)
    runner = target.load_runner(tmp_path, {"max_seq_len": CACHE})
    eager = tiny_model.build(CACHE)
    Q.apply_plan(eager, PLANS[recipe], calibrate(tiny_model, eager, PLANS[recipe], TINY)[0])  # smoothing + GPTQ too
    eager = ExportLlama(eager)
    ids = [int(i) for i in np.random.default_rng(1).integers(3, 40000, size=9)]
    with torch.no_grad():
        want = eager(torch.tensor([ids]), torch.tensor([0]))[0].numpy()
    # int8 dynamic activation rounding can differ by one step between torchao and XNNPACK
    np.testing.assert_allclose(runner.prefill(ids), want, atol=2e-2 if recipe != "int8" else 1e-4, rtol=0)
    ops = result.info["delegation"]
    assert "linear" not in ops["non_delegated_op_types"]
    emb = "embedding_4bit" if recipe == "8da4w" else "embedding_byte"
    assert ops["non_delegated_op_types"].get(emb) == 1
    runner.close()


def test_asymmetric_int4_reproduces_a_q4_1_grid():
    """Weights on a Q4_1 grid (w = d*q + m per block of 32) come back to within the bf16 scale."""
    g = torch.Generator().manual_seed(0)
    d = torch.rand(16, 4, 1, generator=g) * 0.02 + 1e-3
    m = -8 * d + torch.randn(16, 4, 1, generator=g) * 0.01
    q = torch.randint(0, 16, (16, 4, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # every block spans its full grid, as Q4_1 blocks do
    w = (d * q + m).reshape(16, 128)
    qs, s, c = Q.asymmetric_int4_as_symmetric(w, 32)
    back = (s[..., None] * qs.reshape(16, 4, 32).float() + c[..., None]).reshape(16, 128)
    assert int(qs.min()) >= -8 and int(qs.max()) <= 7
    torch.testing.assert_close(back, w, atol=float(d.max()) * 8 * Q.BF16_EPS, rtol=0)
    rtn_q, rtn_s = Q.symmetric_grid(w, 4, 32, search=False, bf16_scales=True)
    rtn = (rtn_q.reshape(16, 4, 32).float() * rtn_s[..., None]).reshape(16, 128)
    assert (back - w).abs().mean() < 0.05 * (rtn - w).abs().mean()


def test_scale_search_never_worse_than_round_to_nearest():
    w = torch.randn(64, 256) * torch.rand(64, 1)
    for bits, group in ((4, 32), (8, 0)):
        q0, s0 = Q.symmetric_grid(w, bits, group, search=False, bf16_scales=False)
        q1, s1 = Q.symmetric_grid(w, bits, group, search=True, bf16_scales=False)
        g = w.shape[1] if group == 0 else group
        err = [((q.reshape(64, -1, g).float() * s[..., None]).reshape(64, 256) - w).pow(2).sum()
               for q, s in ((q0, s0), (q1, s1))]
        assert err[1] <= err[0]


def test_shared_block_means_equal_separate_calls():
    """apply_all computes the block means once for q/k/v-style siblings; the outputs must not change."""
    torch.manual_seed(0)
    x = torch.randn(1, 5, 64)
    mods = [Q.quantize_linear(torch.randn(n, 64), Q.W8DA4) for n in (64, 32, 32)]
    mods.append(Q.quantize_linear(torch.randn(16, 64), Q.W8))  # a plain linear passes through
    with torch.no_grad():
        for got, m in zip(Q.apply_all(mods, x), mods):
            torch.testing.assert_close(got, m(x), rtol=0, atol=0)


@pytest.mark.parametrize("scheme", [Q.W8DA4, Q.W8, Q.W8DA8_OFF, None])
def test_concatenated_linears_compute_the_same_rows(scheme):
    """q/k/v as one matmul (concat_outputs): each scheme quantizes row by row, so the fused output is
    the separate outputs side by side; schemes that differ are not fused."""
    torch.manual_seed(0)
    x = torch.randn(1, 5, 64)
    ws = [torch.randn(n, 64) for n in (64, 32, 32)]
    mods = [Q.quantize_linear(w, scheme) if scheme else torch.nn.Linear(64, w.shape[0], bias=False) for w in ws]
    fused = Q.concat_outputs(mods)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), torch.cat([m(x) for m in mods], -1), rtol=0, atol=1e-5)
    assert Q.concat_outputs([mods[0], Q.quantize_linear(ws[1], Q.W8DA8)]) is None


@pytest.mark.parametrize("recipe", ["fp32", "8da4w", "int8"])
def test_export_forward_equals_the_model_it_wraps(tiny_model, recipe):
    """ExportLlama's swaps (custom-op attention, fused q/k/v with per-head RoPE tables, norms and block
    means as FCs) compute what the quantized Llama computes."""
    from smolship.targets.executorch.ops import ExportLlama, qkv_fused
    from smolship.targets.executorch.recipes import PLANS

    model = tiny_model.build(CACHE)
    # the 4-bit embedding returns fp16 rows, which only ExportLlama casts back: keep it float here
    Q.apply_plan(model, replace(PLANS[recipe], embedding=None))
    ids = torch.tensor([[int(i) for i in np.random.default_rng(2).integers(3, 40000, size=7)]])
    with torch.no_grad():
        want = model(ids, torch.tensor([0]))
        want_nxt = model(torch.tensor([[11]]), torch.tensor([7]))
        wrapped = ExportLlama(model)  # swaps the modules in place, with fresh caches
        assert qkv_fused(wrapped.model)
        got = wrapped(ids, torch.tensor([0]))
        nxt = wrapped(torch.tensor([[11]]), torch.tensor([7]))  # decode step through the custom-op cache
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    torch.testing.assert_close(nxt, want_nxt, rtol=0, atol=1e-4)


def test_matmul_left_outside_xnnpack_fails_the_export():
    from smolship.targets.executorch.export import check_delegated

    check_delegated({"non_delegated_op_types": {"custom_sdpa": 30, "update_cache": 60}})
    with pytest.raises(RuntimeError, match="linear"):
        check_delegated({"non_delegated_op_types": {"linear": 1, "custom_sdpa": 30}})


def test_plan_overrides_first_match_wins(target):
    from smolship.targets.executorch.recipes import plan_for

    recipe = target.recipes["8da4w"]
    plan = plan_for(recipe, ExportOptions(extra={"rules": [[r"layers\.0\..*", "w8"]], "lm_head": "8da8w",
                                                 "embedding_bits": 8}))
    assert plan.scheme_for("layers.0.mlp.down_proj") is Q.W8
    assert plan.scheme_for("layers.1.mlp.down_proj") is Q.W8DA4_SEARCH
    assert plan.scheme_for("lm_head") is Q.W8DA8 and plan.embedding is Q.EMB8
    fp = plan_for(recipe, ExportOptions(keep_embeddings_fp=True))
    assert fp.scheme_for("lm_head") is None and fp.embedding is None
    with pytest.raises(SmolshipError, match="8da3w"):
        plan_for(recipe, ExportOptions(extra={"lm_head": "8da3w"}))


def test_bad_group_size_is_a_user_error(tiny_model, tmp_path, target):
    with pytest.raises(SmolshipError, match="group_size 48"):
        target.export(tiny_model, target.recipes["8da4w"], tmp_path,
                      ExportOptions(max_seq_len=CACHE, extra={"group_size": 48}))


def test_missing_program_is_a_user_error(tmp_path, target):
    with pytest.raises(SmolshipError, match="missing"):
        target.load_runner(tmp_path, {"max_seq_len": CACHE})


# ------------------------------------------------------------------ real SmolLM2-135M (slow)

# The real 135M's fp32 program is not exported here: its ops (custom SDPA, update_cache, the decode loop) are the
# quantized programs' ops, which the real 8da4w / 8da8w tests below and test_offgrid.py run at full size, and
# the tiny fp32 tests above check them against the reference token by token. Its export went to make room in
# CI's budget for ExecuTorch's off-grid test (issue 19).


@pytest.mark.slow
def test_real_135m_default_4bit_recipe(real_executorch_8da4w):
    """The session's shared 8da4w bundle (the one the apps' tests run: one export, not three)."""
    path, manifest = real_executorch_8da4w
    v = manifest["validation"]
    assert v["kld_mean"] <= 0.05 and v["top1_agreement"] >= 0.85, v
    assert manifest["size_mb"] <= 110, manifest["size_mb"]


@pytest.mark.slow
# int8 (not a default recipe) left CI this round: a real ExecuTorch export now takes ~13 min here (about 4x last
# round's; the cause is not found yet) and the suite must stay inside CI's 90 min. It is measured by
# `python -m benchmarks.executorch_front --variants int8` instead.
@pytest.mark.parametrize("recipe", ["8da8w"])
def test_real_135m_8bit_recipes(default_model, default_validator, tmp_path, target, recipe, request):
    """The issue's bound, kld_mean <= 0.004; on 2,048 tokens int8 measures 0.0030 and 8da8w 0.0034
    (block-mean offsets and the two-plane lm_head: see PLANS in target.py). 8da8w is the session's shared
    bundle (the same export the apps' runner test uses: one export, not two)."""
    max_kld = 0.004
    if recipe == "8da8w":
        path, manifest = request.getfixturevalue("real_executorch_8da8w")
    else:
        path, manifest = export_bundle(default_model, "executorch", target.recipes[recipe], tmp_path,
                                       ExportOptions(max_seq_len=512), validator=default_validator)
    v = manifest["validation"]
    assert v["kld_mean"] <= max_kld and v["top1_agreement"] >= 0.95, v


def test_smoothing_folds_without_changing_the_float_model(tiny_model):
    """SmoothQuant moves scale between the norms and the matrices they feed; the function stays the same."""
    ids = torch.tensor([[5, 9, 200, 3000, 17]])
    base = tiny_model.build(CACHE)
    smoothed = tiny_model.build(CACHE)
    g = torch.Generator().manual_seed(0)
    h = tiny_model.config.hidden_size
    scales = {f"layers.{i}.{k}": torch.rand(h, generator=g) * 4 + 0.25
              for i in range(tiny_model.config.num_layers) for k in ("qkv_proj", "gate_up_proj")}
    assert Q.fold_smoothing(smoothed, scales) == 2 * tiny_model.config.num_layers
    assert not torch.equal(smoothed.layers[0].self_attn.q_proj.weight, base.layers[0].self_attn.q_proj.weight)
    with torch.no_grad():
        torch.testing.assert_close(smoothed(ids, torch.tensor([0])), base(ids, torch.tensor([0])), atol=1e-4, rtol=1e-4)


def test_gptq_beats_round_to_nearest_on_the_output_error():
    from smolship.targets.executorch.gptq import gptq_per_channel

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)  # correlated inputs
    w = torch.randn(32, 64, generator=g)
    hessian = 2 * x.t() @ x / x.shape[0]
    q0, s = Q.symmetric_grid(w, 8, 0, search=False, bf16_scales=False)
    q1 = gptq_per_channel(w, hessian, s.reshape(-1, 1), 8)
    err = [((x @ (q.float() * s.reshape(-1, 1)).t() - x @ w.t()) ** 2).mean() for q in (q0, q1)]
    assert err[1] < 0.7 * err[0], err
