"""ONNX target: graph I/O, prefill/decode parity in ONNX Runtime, quantizers, and onnxruntime-genai loading.

Fast tests use random:tiny; @slow tests export the real 135M and hold it to the issue's acceptance
figures. Every check runs the artifact in ONNX Runtime (or onnxruntime-genai) itself.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from smolship.export import export_bundle
from smolship.runner import ReferenceRunner
from smolship.validation.parity import log_softmax
from smolship.targets import ExportOptions, get_target
from smolship.targets.onnx.blockquant import BlockQuant, dequantize, quantize_weight
from smolship.targets.onnx.export import export_onnx, save_model
from smolship.targets.onnx import genai_loop
from smolship.targets.onnx.graph_model import io_names
from smolship.targets.onnx.runner import OnnxRunner


def _tokens(n: int, seed: int = 0) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(100, 40000, size=n)]


@pytest.fixture(scope="module")
def tiny_bundles(tiny_model, tiny_validator, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_tiny")
    target = get_target("onnx")
    opts = ExportOptions(max_seq_len=256)
    return {name: export_bundle(tiny_model, "onnx", target.recipes[name], out, opts, tiny_validator)
            for name in ("fp32", "int4")}


# --- fast: random:tiny --------------------------------------------------------------------------
@pytest.mark.parametrize("graph", ["fused", "plain"])
def test_graph_io_and_ort_prefill_decode_match_reference(tiny_model, tmp_path, graph):
    cfg = tiny_model.config
    model = export_onnx(tiny_model, graph, max_seq_len=64)
    inputs, outputs = io_names(cfg.num_layers)
    assert [v.name for v in model.graph.inputs] == inputs  # genai binds these names
    assert [v.name for v in model.graph.outputs] == outputs
    ops = {n.op_type for n in model.graph}
    if graph == "fused":
        assert {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= ops
    save_model(model, tmp_path)
    runner = OnnxRunner(tmp_path / "model.onnx", cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 64,
                        shared_buffer=graph == "fused", threads=2)
    ref = ReferenceRunner.from_source(tiny_model, max_seq_len=64)
    ids = _tokens(24)
    for _ in range(2):  # the second round proves reset() really starts a new sequence
        np.testing.assert_allclose(runner.prefill(ids[:11]), ref.prefill(ids[:11]), atol=1e-4, rtol=0)
        for t in ids[11:]:
            np.testing.assert_allclose(runner.decode(t), ref.decode(t), atol=1e-4, rtol=0)
    runner.prefill([5])  # a one-token prompt is a prefill too (empty past)


def test_graph_is_a_typed_knob_that_the_export_follows(tiny_model, tmp_path):
    """--set onnx.graph=plain (benchmarks/onnx_anchor.py's "fused" section) passes the knob check and exports
    the plain graph; a quantized recipe or an unknown graph is refused before any file is written."""
    from smolship.errors import SmolshipError

    target = get_target("onnx")
    _, manifest = export_bundle(tiny_model, "onnx", target.recipes["fp32"], tmp_path / "ok",
                                ExportOptions(max_seq_len=64, extra={"graph": "plain"}))
    info = manifest["target_info"]
    assert info["graph"] == "plain" and not info["past_present_share_buffer"]
    assert "GroupQueryAttention" not in info["ops"] and manifest["quant"]["options"] == {"graph": "plain"}
    for recipe, graph, words in [("int4", "plain", "fused graph"), ("fp32", "fuzed", "fused, plain")]:
        with pytest.raises(SmolshipError) as err:
            export_bundle(tiny_model, "onnx", target.recipes[recipe], tmp_path / "bad",
                          ExportOptions(max_seq_len=64, extra={"graph": graph}))
        assert words in f"{err.value.problem} {err.value.fix}"
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_external_data_is_written_and_loads(tiny_model, tmp_path):
    model = export_onnx(tiny_model, "fused", max_seq_len=32)
    files = save_model(model, tmp_path, force_external=True)
    assert files == ["model.onnx", "model.onnx_data"]  # transformers.js fetches <file>_data
    assert (tmp_path / "model.onnx").stat().st_size < 200_000 < (tmp_path / "model.onnx_data").stat().st_size
    cfg = tiny_model.config
    runner = OnnxRunner(tmp_path / "model.onnx", cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 32, True, threads=1)
    ref = ReferenceRunner.from_source(tiny_model, max_seq_len=32)
    np.testing.assert_allclose(runner.prefill([1, 2, 3]), ref.prefill([1, 2, 3]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("bits,symmetric", [(4, False), (8, False), (8, True)])
def test_block_quant_matches_onnxruntime_matmulnbits(bits, symmetric):
    """Our packing is what ORT's MatMulNBits kernel decodes: its output equals x @ dequantize(ours)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    k, n = 96, 40  # 3 blocks of 32: odd block count exercises zero-point padding
    w = rng.standard_normal((k, n)).astype(np.float32)
    cfg = BlockQuant(bits=bits, block_size=32, symmetric=symmetric)
    qz = quantize_weight(w, cfg)
    inits = [numpy_helper.from_array(qz.packed, "B"), numpy_helper.from_array(qz.scales, "S")]
    if qz.zero_points is not None:
        inits.append(numpy_helper.from_array(qz.zero_points, "Z"))
    node = helper.make_node("MatMulNBits", ["A", *[t.name for t in inits]], ["Y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=32, accuracy_level=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=10)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((2, k)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"A": x})[0], x @ dequantize(qz), atol=1e-4, rtol=1e-4)
    rel = np.linalg.norm(dequantize(qz) - w) / np.linalg.norm(w)
    assert rel < {4: 0.12, 8: 0.01}[bits]


def test_symmetric_8bit_reproduces_a_q8_0_grid_exactly():
    """The default model's embedding is Q8_0 (block 32, amax/127 scales): our 8-bit lm_head is lossless."""
    rng = np.random.default_rng(1)
    d = rng.uniform(1e-3, 1e-2, size=(1, 64, 1)).astype(np.float32)
    q = rng.integers(-127, 128, size=(1, 64, 32)).astype(np.float32)
    q[..., 0] = 127  # Q8_0 blocks always reach amax = 127 d
    w = (q * d).reshape(1, -1).T.copy()  # (K=2048, N=1)
    qz = quantize_weight(w, BlockQuant(bits=8, block_size=32, symmetric=True))
    np.testing.assert_array_equal(dequantize(qz), w)


def test_tiny_bundles_validate_and_quantize(tiny_bundles):
    fp32 = tiny_bundles["fp32"][1]
    assert fp32["model_files"] == ["onnx", "genai_config.json", "config.json"]
    assert fp32["validation"]["max_abs_logit_diff"] < 1e-3
    int4 = tiny_bundles["int4"][1]
    ops = int4["target_info"]["ops"]
    assert ops.get("DequantizeLinear", 0) == 4 * 2 + 1  # 4 per layer + lm_head: standard ops only
    assert not [op for op in ops if op.startswith("com.microsoft.") and "Quant" in op] and int4["target_info"]["portable_embedding"]
    assert "shared with lm_head" in int4["target_info"]["quant"]["embedding"]
    # random weights give near-uniform logits (top-1 is noise there); 4-bit + int8 activations measured 0.04
    assert int4["validation"]["kld_mean"] < 0.1, int4["validation"]


def test_native_ort_fuses_the_dequantized_weights_and_a_browser_fold_agrees(tiny_bundles, tmp_path):
    """Native ONNX Runtime turns each DequantizeLinear -> MatMul into MatMulNBits at load (the fast int4 kernel,
    what genai and Node run); `session.disable_quant_qdq=1` (what the web page sets) folds them into fp32
    weights instead, which computes the same function up to int8 activation rounding."""
    import onnx

    from smolship.targets.onnx.runner import BROWSER_FOLD

    path, manifest = tiny_bundles["int4"]
    prompt = _tokens(12, seed=5)
    logits = {}
    for mode, config in (("native", None), ("folded", BROWSER_FOLD)):
        runner = get_target("onnx").load_runner(path, manifest, session_config=config,
                                                optimized_path=tmp_path / f"{mode}.onnx")
        logits[mode] = runner.prefill(prompt)
        ops = Counter(n.op_type for n in onnx.load(str(tmp_path / f"{mode}.onnx"), load_external_data=False).graph.node)
        fused = 4 * 2 + 1 if mode == "native" else 0  # 4 per layer + the lm_head (its codes also feed the gather)
        assert ops["MatMulNBits"] == fused and ops["DequantizeLinear"] == 0, (mode, ops)
    a, b = log_softmax(logits["native"]), log_softmax(logits["folded"])
    assert float((np.exp(a) * (a - b)).sum(-1).mean()) < 0.02
    assert (logits["native"].argmax(-1) == logits["folded"].argmax(-1)).mean() >= 0.75


def test_genai_runs_the_bundle_and_agrees_with_our_runner(tiny_bundles):
    """onnxruntime-genai reads the folder (genai_config + tokenizer) and decodes what OnnxRunner decodes."""
    og = pytest.importorskip("onnxruntime_genai")
    path, manifest = tiny_bundles["int4"]
    prompt = _tokens(12, seed=3)
    ours = _greedy(get_target("onnx").load_runner(path, manifest), prompt, 10)
    got, _ = genai_loop.greedy(og.Model(str(path)), prompt, 10)
    assert got == ours[: len(got)] and len(got) >= 5
    assert json.loads((path / "genai_config.json").read_text())["search"]["past_present_share_buffer"] is True


def _greedy(runner, prompt, n):
    logits = runner.prefill(prompt)[-1]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = runner.decode(out[-1])
    return out


# --- slow: the real SmolLM2-135M-Instruct -------------------------------------------------------
@pytest.fixture(scope="module")
def real_bundles(default_model, default_validator, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_135m")
    target = get_target("onnx")
    cache = {}

    def get(recipe: str):
        if recipe not in cache:
            cache[recipe] = export_bundle(default_model, "onnx", target.recipes[recipe], out,
                                          ExportOptions(max_seq_len=512), default_validator)
        return cache[recipe]
    return get


@pytest.mark.slow
def test_real_fp32_parity_and_64_greedy_tokens(default_model, real_bundles):
    path, manifest = real_bundles("fp32")
    assert manifest["validation"]["max_abs_logit_diff"] <= 1e-3
    prompt = default_model.tokenizer.encode_chat([{"role": "user", "content": "Write a short poem about the sea."}])
    ref = ReferenceRunner.from_source(default_model, max_seq_len=512)
    assert _greedy(get_target("onnx").load_runner(path, manifest), prompt, 64) == _greedy(ref, prompt, 64)


@pytest.mark.slow
def test_real_int8_kld_with_quantized_lm_head(real_bundles):
    _, manifest = real_bundles("int8")
    quant = manifest["target_info"]["quant"]
    assert quant["matmul_weights"] and "shared with lm_head" in quant["embedding"]
    assert manifest["validation"]["kld_mean"] <= 0.004, manifest["validation"]


@pytest.mark.slow
def test_real_int4_kld_and_size(js_int4_bundle):
    """The int4 bundle the JS clients load (one export for both: it is validated on 128 eval tokens there)."""
    _, manifest, _ = js_int4_bundle
    assert manifest["size_mb"] <= 110, manifest["size_mb"]
    assert manifest["validation"]["kld_mean"] <= 0.05, manifest["validation"]
    quant = manifest["target_info"]["quant"]["matmul_weights"]
    # quant/mixed.py's 8-bit rule gives way where 8 bits would not lower the error: this model's Q4_1 layers all
    # keep the 4-bit offset grid (test_offgrid checks the rule off the grid); the lm_head stays 8-bit
    assert quant.get("int4 b32 asym offset-search") == 4 * 30 and quant.get("int8 b64 sym rtn") == 1, quant


@pytest.mark.slow
def test_real_int8_generates_in_onnxruntime_genai_what_our_runner_generates(default_model, real_bundles):
    """genai's own tokenizer and generator on the bundle folder (what the Android / iOS apps run) give the
    same greedy tokens as our OnnxRunner through the same graph.

    Not "Paris": on this prompt the reference's top two first tokens ("The" / "L") are close. Since
    calibration moved to held-out text (issue 16: it used to read the start of the eval set), int8's
    SmoothQuant scales flip them too, as int4's int8-activation rounding already did ("L'Étoile, ...").
    The browser test asserts Paris (onnxruntime-web runs float activations)."""
    og = pytest.importorskip("onnxruntime_genai")
    from smolship.generate import generate
    from smolship.targets import get_target

    path, manifest = real_bundles("int8")
    model = og.Model(str(path))
    tokenizer = og.Tokenizer(model)
    prompt = default_model.tokenizer.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    ids = tokenizer.encode(prompt)
    assert list(ids) == default_model.tokenizer.encode(prompt, add_bos=False)
    out, _ = genai_loop.greedy(model, list(ids), 24)
    ours = list(generate(get_target("onnx").load_runner(path, manifest), list(ids), max_new_tokens=len(out),
                         stop_ids=default_model.tokenizer.stop_ids))
    assert out[:len(ours)] == ours, (tokenizer.decode(out), tokenizer.decode(ours))

