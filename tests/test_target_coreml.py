"""Core ML target: conversion, package structure, read-back weight parity, and the runtime on macOS 15+.

Linux cannot execute Core ML, so what runs everywhere is real but runtime-free: the export wrapper
against the reference model, the traced graph at shapes it was not traced with, the saved
.mlpackage's structure (states, input ranges, metadata, which weights are compressed how), and the
package's own weights read back and run through the reference graph. The runtime tests (MLModel
.predict with state) skip off macOS with the target's own reason and run on a Mac.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("coremltools")

from smolship.errors import SmolshipError
from smolship.export import export_bundle
from smolship.targets import ExportOptions, get_target
from smolship.targets.coreml import convention as cv
from smolship.targets.coreml import readback
from smolship.targets.coreml.quantize import asymmetric_blocks
from smolship.targets.coreml.export import trace
from smolship.targets.coreml.graph_runner import GraphRunner
from smolship.targets.coreml.recipes import expected_compression
from smolship.validation.weight_parity import weight_parity
from smolship.validation.parity import measure_parity
from smolship.validation.validate import ValidationSettings, Validator
from conftest import quick_settings  # noqa: E402

TARGET = get_target("coreml")
CAN_RUN, WHY_NOT = TARGET.can_run()
macos_only = pytest.mark.skipif(not CAN_RUN, reason=WHY_NOT or "")
linux_only = pytest.mark.skipif(CAN_RUN, reason="checks the report of a machine without Core ML")
TINY_SEQ = 64
N_LINEAR_TINY = 14  # 2 layers x (q, k, v, o, gate, up, down)


def mask(q: int, past: int) -> torch.Tensor:
    return torch.from_numpy(cv.causal_mask(q, past).astype(np.float32))


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory, tiny_model):
    """All four recipes of random:tiny through the real export pipeline (one conversion, reused)."""
    out = tmp_path_factory.mktemp("coreml")
    type(TARGET)._last = None  # an earlier module's export of the same model and length must not be reused here
    # random:tiny has 2 layers, both "first/last", which w4's 8-bit rule (quant/mixed.py) would store at 8 bits
    # whole: no rules here, so the 4-bit path is what these tests see (test_w4_rules_* covers the rules)
    opts = ExportOptions(max_seq_len=TINY_SEQ, extra={"eight_bit": []})
    return {r: export_bundle(tiny_model, "coreml", TARGET.recipes[r], out, opts) for r in ("fp16", "w8", "w4", "pal4")}


def read(bundle, source) -> readback.Package:
    return readback.read_package(bundle / readback.MODEL_FILE, list(source.state_dict))


# --- no runtime needed --------------------------------------------------------------------------
def test_package_imports_without_coremltools():
    code = ("import sys; sys.modules['coremltools'] = None; import smolship.targets.coreml; "
            "import smolship.targets.coreml.convention, smolship.targets.coreml.naming")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_trace_is_dynamic_in_query_and_past(tiny_model):
    """The graph Core ML converts was traced at q=2, past=3; it must be right at other shapes too."""
    traced = trace(tiny_model, TINY_SEQ)
    ref = tiny_model.build(TINY_SEQ)
    ids = torch.randint(0, tiny_model.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for start, end in ((0, 7), (7, 8), (8, 10)):
            got = traced(ids[:, start:end].int(), mask(end - start, start))
            torch.testing.assert_close(got, ref(ids[:, start:end], torch.tensor([start])), atol=1e-5, rtol=1e-5)


def test_fp16_graph_survives_massive_activations(tiny_model):
    """SmolLM2-135M carries residual activations of ~25,000 (mean x^2 ~1e6 > fp16's 65,504). Core ML
    computes in fp16, so the exported graph must not square them: run it at fp16 with one such
    dimension injected and compare with the fp32 reference."""
    state = dict(tiny_model.state_dict)
    emb = state["embed_tokens.weight"].clone()
    emb[:, 5] += 20000.0
    state["embed_tokens.weight"] = emb
    source = dataclasses.replace(tiny_model, state_dict=state, config=dataclasses.replace(tiny_model.config, tie_word_embeddings=False))
    source.state_dict["lm_head.weight"] = tiny_model.state_dict["embed_tokens.weight"]  # keep logits O(1)
    ids = list(range(300, 340))
    ref = source.build(TINY_SEQ)(torch.tensor([ids]), torch.tensor([0]))[0].detach().numpy()
    got = GraphRunner(source.config, source.state_dict, TINY_SEQ).prefill(ids)
    assert np.isfinite(got).all()
    # fp16 holds 20,000 to +-8 and the normalised rows to ~1e-3: logits agree to a few hundredths
    np.testing.assert_allclose(got, ref, atol=0.1)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_fp16_graph_cache_continues_prefill(tiny_model):
    """The package's protocol (mask width = past + q, stacked states) continues a prefill exactly."""
    runner = GraphRunner(tiny_model.config, tiny_model.state_dict, TINY_SEQ, dtype=torch.float32)
    ids = list(range(100, 120))
    whole = runner.prefill(ids)[-1]
    runner.prefill(ids[:-1])
    np.testing.assert_allclose(runner.decode(ids[-1]), whole, atol=1e-4)  # fp32: float noise only
    with pytest.raises(SmolshipError, match="KV cache holds"):
        for t in range(TINY_SEQ):
            runner.decode(t)


def test_asymmetric_blocks_reproduce_a_min_max_grid():
    """Weights on a per-block asymmetric 4-bit grid (Q4_1: fp16 d, m) come back to fp16 precision;
    coremltools' integer zero point cannot (its grid is anchored at 0)."""
    from coremltools.converters.mil.mil import types
    from coremltools.optimize._utils import compute_qparams_by_dtype

    rng = np.random.default_rng(0)
    d = rng.uniform(0.005, 0.02, (64, 4, 1)).astype(np.float16).astype(np.float32)
    m = -rng.uniform(0.05, 0.15, (64, 4, 1)).astype(np.float16).astype(np.float32)
    levels = rng.integers(0, 16, (64, 4, 32))
    levels[..., 0], levels[..., 1] = 0, 15  # Q4_1 puts the block's min at 0 and its max at 15
    w = (d * levels + m).reshape(64, 128)
    q, scale, offset = asymmetric_blocks(w, 4, 32)
    back = np.repeat(scale.astype(np.float32), 32, 1) * (q - np.repeat(offset.astype(np.float32), 32, 1))
    # The only loss is the fp16 offset: |offset| <= 15 -> error <= 15 * 2^-11 steps of d.
    assert np.abs(back - w).max() <= 0.01 * d.max()
    qz, sz, zp = compute_qparams_by_dtype(w, types.uint4, "LINEAR", [1, 32])
    lib = np.repeat(sz, 32, 1) * (qz.astype(np.float32) - np.repeat(zp.astype(np.float32), 32, 1))
    assert np.abs(lib - w).max() > 10 * np.abs(back - w).max()


@pytest.mark.parametrize("recipe", ["fp16", "w8", "w4", "pal4"])
def test_package_structure(tiny_bundles, tiny_model, recipe):
    bundle, manifest = tiny_bundles[recipe]
    info, cfg = manifest["target_info"], tiny_model.config
    state_shape = list(cv.cache_shape(cfg, TINY_SEQ))
    assert info["states"] == {s: {"dtype": "fp16", "shape": state_shape} for s in cv.STATES}
    assert info["inputs"][cv.INPUT_IDS] == {"dtype": "int32", "ranges": [[1, 1], [1, TINY_SEQ]]}
    assert info["inputs"][cv.CAUSAL_MASK]["ranges"] == [[1, 1], [1, 1], [1, TINY_SEQ], [1, TINY_SEQ]]
    assert info["metadata"][cv.META_NAME] == tiny_model.name
    assert manifest["model_files"] == [readback.MODEL_FILE]
    assert any(f.startswith("model.mlpackage/Data/") for f in manifest["files"])  # hashed inside the folder
    assert {"config.json", "tokenizer.json"} <= set(manifest["files"])
    pkg = read(bundle, tiny_model)
    want = expected_compression(info["plan"], tiny_model.state_dict)
    assert readback.check_structure(pkg, cfg, TINY_SEQ, want) == []
    storage = {name: w.storage for name, w in pkg.weights.items()}
    linear = [s for n, s in storage.items() if "_proj" in n]
    expect_linear = {"fp16": "fp16", "w8": "int8 block", "w4": "uint4 block [1, 32] + fp16 offset",
                     "pal4": "4-bit LUT"}[recipe]
    assert len(linear) == N_LINEAR_TINY and all(s.startswith(expect_linear) for s in linear), linear
    embed = "fp16" if recipe == "fp16" else "int8 block [1, 32]"
    assert storage["embed_tokens.weight"] == embed
    assert all(s == "fp16" for n, s in storage.items() if "norm" in n)
    assert sorted(pkg.tables) == ["model_rope_cos_to_fp16", "model_rope_sin_to_fp16"]


def test_one_conversion_serves_every_recipe(tiny_bundles):
    """The fp16 conversion is cached (on disk) for the next recipe of the same source and length."""
    reused = {r: m["target_info"]["conversion_reused"] for r, (_b, m) in tiny_bundles.items()}
    assert reused == {"fp16": False, "w8": True, "w4": True, "pal4": True}


def test_structure_check_can_fail(tiny_bundles, tiny_model):
    bundle, _ = tiny_bundles["fp16"]
    pkg = read(bundle, tiny_model)
    problems = readback.check_structure(pkg, tiny_model.config, 2 * TINY_SEQ, {"layers.0.mlp.up_proj.weight": "x"})
    text = " | ".join(problems)
    assert "state 'keyCache'" in text and f"input '{cv.INPUT_IDS}'" in text and "layers.0.mlp.up_proj" in text


def test_palettized_weights_use_16_values_per_group(tiny_bundles, tiny_model):
    pkg = read(tiny_bundles["pal4"][0], tiny_model)
    w = pkg.weights["layers.0.mlp.up_proj.weight"].value  # (128, 64): groups of 16 output channels
    assert all(len(np.unique(w[g:g + 16])) <= 16 for g in range(0, w.shape[0], 16))


def test_w4_reproduces_a_source_on_the_grid(tiny_model, tmp_path):
    """A source whose linears sit on an asymmetric 4-bit grid is stored (nearly) losslessly by w4."""
    state = dict(tiny_model.state_dict)
    for name, w in state.items():
        if "_proj" in name:
            q, s, o = asymmetric_blocks(w.numpy(), 4, 32)
            state[name] = torch.from_numpy(np.repeat(s.astype(np.float32), 32, 1) * (q - np.repeat(o.astype(np.float32), 32, 1)))
    source = dataclasses.replace(tiny_model, state_dict=state)
    result = TARGET.export(source, TARGET.recipes["w4"], tmp_path, ExportOptions(max_seq_len=TINY_SEQ, extra={"eight_bit": []}))
    assert result.files == [readback.MODEL_FILE]
    pkg = read(tmp_path, source)
    for name, w in pkg.weights.items():
        if "_proj" in name:  # fp16 offsets cost at most ~1% of a step
            step = np.abs(np.diff(np.unique(w.value[0, :32]))).min()
            assert np.abs(w.value - state[name].numpy()).max() < 0.02 * step, name


def test_keep_embeddings_fp(tiny_model, tmp_path):
    TARGET.export(tiny_model, TARGET.recipes["w4"], tmp_path,
                  ExportOptions(max_seq_len=TINY_SEQ, keep_embeddings_fp=True, extra={"eight_bit": []}))
    pkg = read(tmp_path, tiny_model)
    assert pkg.weights["embed_tokens.weight"].storage == "fp16"
    assert pkg.weights["layers.1.self_attn.k_proj.weight"].storage.startswith("uint4")


def test_w4_rules_store_named_weights_at_8_bits(tiny_model, tmp_path):
    """Mixed precision (issue 19): a rule's weights are uint8 blocks, the rest stay uint4 blocks, and the
    structure check reads the rule back from the manifest's plan (it fails if the package disagrees)."""
    opts = ExportOptions(max_seq_len=TINY_SEQ, extra={"eight_bit": [r"layers\.1\.self_attn\.[kv]_proj\.weight"],
                                                      "grid_search": True})
    result = TARGET.export(tiny_model, TARGET.recipes["w4"], tmp_path, opts)
    plan = result.info["plan"]
    assert plan["rules"] == [[r"layers\.1\.self_attn\.[kv]_proj\.weight", "uint8 per-block 32 + fp16 offset"]]
    pkg = read(tmp_path, tiny_model)
    storage = {n: w.storage for n, w in pkg.weights.items() if "_proj" in n}
    eight = {n for n, s in storage.items() if s.startswith("uint8")}
    assert eight == {"layers.1.self_attn.k_proj.weight", "layers.1.self_attn.v_proj.weight"}, storage
    assert all(s.startswith("uint4 block") for n, s in storage.items() if n not in eight)
    want = expected_compression(plan, tiny_model.state_dict)
    assert readback.check_structure(pkg, tiny_model.config, TINY_SEQ, want) == []
    wrong = expected_compression({**plan, "rules": []}, tiny_model.state_dict)
    assert any("k_proj" in p for p in readback.check_structure(pkg, tiny_model.config, TINY_SEQ, wrong))
    with pytest.raises(SmolshipError, match="eight_bits"):
        TARGET.export(tiny_model, TARGET.recipes["w4"], tmp_path / "x", ExportOptions(max_seq_len=TINY_SEQ, extra={"eight_bits": []}))


def test_max_seq_len_out_of_range(tiny_model, tmp_path):
    with pytest.raises(SmolshipError, match="max-seq-len"):
        TARGET.export(tiny_model, TARGET.recipes["fp16"], tmp_path, ExportOptions(max_seq_len=10**6))


@pytest.mark.parametrize("recipe", ["fp16", "w4"])
def test_weight_parity_tiny(tiny_bundles, tiny_model, recipe):
    bundle, manifest = tiny_bundles[recipe]
    v = Validator(tiny_model, quick_settings(256))
    wp = weight_parity(TARGET, bundle, manifest, tiny_model, v.reference, v.docs, v.settings.parity)
    assert wp["structure_ok"], wp["structure_problems"]
    if recipe == "fp16":  # fp16 weight rounding only: relative error ~2e-4 per weight
        assert wp["max_abs_logit_diff"] < 0.05 and wp["top1_agreement"] >= 0.99
        assert max(wp["weight_rel_rmse"].values()) < 5e-4
        assert wp["fp16_graph"]["kld_mean"] < 1e-3  # plus fp16 activations
    else:  # random weights are off any grid: real 4-bit error, but bounded
        assert wp["weight_rel_rmse"]["linear"] < 0.1 and wp["kld_mean"] < 0.2


@linux_only
def test_weight_parity_follows_the_validation_settings(tiny_bundles, tiny_model, tmp_path):
    """Off macOS the headline figures come from weight_parity: it measures the user's --eval-tokens /
    --eval-file documents against the validator's own reference (not a fixed 512-token eval of its own)."""
    bundle, manifest = tiny_bundles["w8"]
    words = "The river carried small boats past the old mill while children counted them from the bridge. "
    eval_file = tmp_path / "mine.txt"
    eval_file.write_text(f"{words * 3}\n\n{words * 4}\n", encoding="utf-8")
    for settings in (quick_settings(128), ValidationSettings(eval_file=eval_file, measure_latency=False,
                                                             parity=quick_settings().parity)):
        v = Validator(tiny_model, settings)
        result = v.validate(bundle, manifest)
        wp = result["weight_parity"]
        assert wp["eval_tokens"] == sum(len(d.ids) for d in v.docs) and wp["eval_docs"] == len(v.docs)
        assert result["kld_mean"] == wp["kld_mean"]
        assert set(v.reference._logits) == {d.ids for d in v.docs}  # scored by the validator's reference
    assert [d.id for d in v.docs] == ["mine-0", "mine-1"]


@linux_only
def test_report_says_runtime_not_run(tiny_model, tiny_validator, tmp_path):
    bundle, manifest = export_bundle(tiny_model, "coreml", TARGET.recipes["w8"], tmp_path,
                                     ExportOptions(max_seq_len=TINY_SEQ), validator=tiny_validator)
    v = manifest["validation"]
    assert v["runtime_ran"] is False and "macOS 15+" in v["runtime_note"] and "not run" in v["runtime_note"]
    assert v["kld_mean"] == v["weight_parity"]["kld_mean"] and v["weight_parity"]["structure_ok"]
    with pytest.raises(SmolshipError, match="macOS"):
        TARGET.load_runner(bundle, manifest)


# --- the Core ML runtime (macOS 15+) ------------------------------------------------------------
@macos_only
@pytest.mark.parametrize("recipe", ["fp16", "w4"])
def test_runtime_parity(tiny_bundles, tiny_validator, recipe):
    bundle, manifest = tiny_bundles[recipe]
    runner = TARGET.load_runner(bundle, manifest)
    try:
        got = measure_parity(runner, tiny_validator.reference, tiny_validator.docs, tiny_validator.settings.parity)
    finally:
        runner.close()
    # fp16 activations in Core ML: the tiny model's logits are O(1), so a few 1e-2 of difference.
    assert got["kld_mean"] < (1e-3 if recipe == "fp16" else 0.2)


@macos_only
def test_runtime_cache_continues_prefill(tiny_bundles, tiny_model):
    bundle, manifest = tiny_bundles["fp16"]
    runner = TARGET.load_runner(bundle, manifest)
    ids = list(range(100, 120))
    whole = runner.prefill(ids)[-1]
    runner.prefill(ids[:-1])
    stepped = runner.decode(ids[-1])
    np.testing.assert_allclose(stepped, whole, atol=0.05)  # fp16 compute, two different query lengths
    runner.prefill(ids)
    with pytest.raises(SmolshipError, match="KV cache holds"):
        for t in range(TINY_SEQ):
            runner.decode(t)
    runner.close()


# --- real weights (slow) ------------------------------------------------------------------------
REAL_SEQ = 256


@pytest.mark.slow
def test_real_fp16_weight_parity(default_model, default_validator, tmp_path):
    _, manifest = export_bundle(default_model, "coreml", TARGET.recipes["fp16"], tmp_path,
                                ExportOptions(max_seq_len=REAL_SEQ), validator=default_validator)
    wp = manifest["validation"]["weight_parity"]
    assert wp["structure_ok"], wp["structure_problems"]
    assert wp["max_abs_logit_diff"] <= 0.1 and wp["top1_agreement"] >= 0.99, wp


@pytest.mark.slow
def test_real_w4_weight_parity_and_size(default_model, default_validator, tmp_path):
    _, manifest = export_bundle(default_model, "coreml", TARGET.recipes["w4"], tmp_path,
                                ExportOptions(max_seq_len=REAL_SEQ), validator=default_validator)
    wp = manifest["validation"]["weight_parity"]
    assert wp["structure_ok"], wp["structure_problems"]
    assert wp["kld_mean"] <= 0.05 and wp["top1_agreement"] >= 0.97, wp
    assert manifest["size_mb"] <= 110, manifest["size_mb"]
