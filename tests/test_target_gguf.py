"""GGUF target: file structure and metadata, lossless copies, llama.cpp's quantizer, parity measured in
llama.cpp itself (llama-cpp-python), the bare file answering a chat, and bad input.

Fast tests use random:tiny (plus two hand-made configs: 256-wide rows so k-quants really apply, and an
untied model); slow tests export the real 135M.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import gguf
import numpy as np
import pytest
import torch

from smolship.errors import SmolshipError
from smolship.export import export_bundle
from smolship.exporter import load_model
from smolship.exporter.config import LlamaConfig
from smolship.exporter.gguf_source import GGUFFile
from smolship.exporter.model import CacheMode, Llama
from smolship.exporter.naming import permute_qk
from smolship.exporter.sources import SourceModel, default_model_path
from smolship.targets import ExportOptions, get_target
from smolship.targets.gguf.index import tensor_bytes, tensor_table
from smolship.validation.validate import Validator
from tests.conftest import quick_settings

TARGET = get_target("gguf")


def recipe(name):
    return TARGET.recipes[name]


def export(source, name, out, options=None, validator=None):
    return export_bundle(source, "gguf", recipe(name), out, options, validator)


def reader(bundle):
    return gguf.GGUFReader(bundle / "model.gguf")


def fields(r) -> dict:
    return {k: f.contents() for k, f in r.fields.items()}


def make_source(tokenizer_source, cfg: LlamaConfig, name: str, seed: int = 0) -> SourceModel:
    """A random model at `cfg` with the real tokenizer (hand-made shapes for edge cases)."""
    model = Llama(cfg, max_seq_len=16, cache_mode=CacheMode.EXPLICIT).init_random(seed)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight" or not cfg.tie_word_embeddings}
    return SourceModel(name=name, config=cfg, state_dict=state, tokenizer=tokenizer_source.tokenizer,
                       source={"kind": "random", "ref": name, "sha256": None})


@pytest.fixture(scope="module")
def tiny_f32(tiny_model, tmp_path_factory):
    path, manifest = export(tiny_model, "f32", tmp_path_factory.mktemp("f32"), ExportOptions(extra={"license": "apache-2.0"}))
    return path, manifest


# --- structure and metadata ------------------------------------------------------------------------

def test_llama_metadata_tokenizer_and_general_fields(tiny_model, tiny_f32):
    bundle, manifest = tiny_f32
    f = fields(reader(bundle))
    cfg = tiny_model.config
    assert f["general.architecture"] == "llama" and f["general.name"] == tiny_model.name
    assert f["general.size_label"] and f["general.quantized_by"].startswith("smolship")
    assert f["general.license"] == "apache-2.0" and f["smolship.source.kind"] == "random"
    assert (f["llama.context_length"], f["llama.embedding_length"], f["llama.block_count"]) == (
        cfg.max_position_embeddings, cfg.hidden_size, cfg.num_layers)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"], f["llama.vocab_size"]) == (
        cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size)
    assert f["llama.rope.freq_base"] == cfg.rope_theta and f["llama.rope.dimension_count"] == cfg.head_dim
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg.rms_norm_eps)
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "smollm"
    src = fields(gguf.GGUFReader(default_model_path()))  # the tokenizer's origin: arrays must round-trip exactly
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.chat_template",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token"):
        assert f[key] == src[key], key
    assert manifest["model_files"] == ["model.gguf"]
    assert manifest["target_info"]["tensor_types"] == {"F32": 2 * 9 + 2}  # 9 per layer + embedding + final norm


def test_f32_file_reloads_to_the_same_model(tiny_model, tiny_f32):
    """Read back by smolship's GGUF loader (which un-permutes Q/K): identical config and weights."""
    again = load_model(tiny_f32[0] / "model.gguf")
    eps = again.config.rms_norm_eps  # stored as float32 in GGUF
    assert dataclasses.replace(again.config, rms_norm_eps=tiny_model.config.rms_norm_eps) == tiny_model.config
    assert eps == pytest.approx(tiny_model.config.rms_norm_eps, rel=1e-6)
    assert again.state_dict.keys() == tiny_model.state_dict.keys()
    for k, v in tiny_model.state_dict.items():
        assert torch.equal(again.state_dict[k], v), k
    q = next(t for t in reader(tiny_f32[0]).tensors if t.name == "blk.1.attn_q.weight")
    want = permute_qk(tiny_model.state_dict["layers.1.self_attn.q_proj.weight"].numpy(), tiny_model.config.num_heads)
    assert np.array_equal(np.asarray(q.data).reshape(want.shape), want)  # stored in llama.cpp's rotary order


def test_tied_embedding_is_not_duplicated_and_untied_output_is_written(tiny_model, tmp_path):
    names = {t.name for t in tensor_table(export(tiny_model, "q4_0", tmp_path / "tied")[0] / "model.gguf")}
    assert "token_embd.weight" in names and "output.weight" not in names
    cfg = dataclasses.replace(tiny_model.config, tie_word_embeddings=False)
    untied = make_source(tiny_model, cfg, "untied")
    bundle, manifest = export(untied, "q5_1", tmp_path / "untied", validator=Validator(untied, quick_settings(128)))
    types = {t.name: t.type for t in tensor_table(bundle / "model.gguf")}
    assert types["output.weight"] == types["token_embd.weight"] == "Q8_0" and types["blk.0.ffn_up.weight"] == "Q5_1"
    assert manifest["validation"]["kld_mean"] < 0.02  # llama.cpp really uses the separate output matrix


@pytest.mark.parametrize("name,main,emb", [("f16", "F16", "F16"), ("bf16", "BF16", "BF16"), ("q8_0", "Q8_0", "Q8_0"),
                                           ("q4_1", "Q4_1", "Q8_0"), ("q5_0", "Q5_0", "Q8_0"), ("q5_1", "Q5_1", "Q8_0")])
def test_numpy_recipes_write_their_types(tiny_model, tmp_path, name, main, emb):
    types = {t.name: t.type for t in tensor_table(export(tiny_model, name, tmp_path)[0] / "model.gguf")}
    assert types["token_embd.weight"] == emb and types["blk.0.attn_norm.weight"] == "F32"
    assert {types[f"blk.{i}.{n}.weight"] for i in range(2) for n in ("attn_q", "attn_v", "ffn_down")} == {main}


def test_keep_embeddings_fp_and_all_4bit_variant(tiny_model, tmp_path):
    def emb(bundle):
        return next(t.type for t in tensor_table(bundle / "model.gguf") if t.name == "token_embd.weight")

    assert emb(export(tiny_model, "q4_0", tmp_path / "a", ExportOptions(keep_embeddings_fp=True))[0]) == "F16"
    assert emb(export(tiny_model, "q4_0", tmp_path / "b", ExportOptions(extra={"embedding_type": "q4_0"}))[0]) == "Q4_0"


# --- parity inside llama.cpp ------------------------------------------------------------------------

def test_f32_and_q8_0_run_in_llama_cpp_at_parity(tiny_model, tiny_validator, tiny_f32, tmp_path):
    f32 = tiny_validator.validate(tiny_f32[0])
    assert f32["kld_mean"] < 1e-5 and f32["top1_agreement"] == 1.0  # fp32 weights: float noise only
    _, m = export(tiny_model, "q8_0", tmp_path, validator=tiny_validator)
    assert m["validation"]["kld_mean"] < 5e-3 and m["validation"]["top1_agreement"] > 0.9


def test_k_quants_go_through_llama_cpp_with_imatrix(tiny_model, tmp_path):
    """256-wide rows, so llama.cpp really writes Q4_K / Q6_K (a 576-wide model falls back to 32-blocks)."""
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64,
                      max_position_embeddings=512)
    src = make_source(tiny_model, cfg, "wide")
    validator = Validator(src, quick_settings(128))
    bundle, m = export(src, "q4_k_m", tmp_path / "km", validator=validator)
    info = m["target_info"]
    assert info["quantizer"] == "llama.cpp" and info["imatrix"]["entries"] == 2 * 7 + 1
    assert "held-out" in info["calibration"]["text"] and info["calibration"]["tokens"] == info["imatrix"]["tokens"]
    types = {t.name: t.type for t in tensor_table(bundle / "model.gguf")}
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_up.weight"] == "Q4_K"
    assert types["blk.1.ffn_down.weight"] == "Q6_K"  # llama.cpp's Q4_K_M: more bits for some ffn_down
    assert types["blk.0.attn_v.weight"] == types["token_embd.weight"] == "Q8_0"  # the recipe's 8-bit tensors
    assert not (tmp_path / "km" / "gguf-q4_k_m" / ".intermediate.gguf").exists()
    f = fields(reader(bundle))
    assert f["general.file_type"] == 15 and f["quantize.imatrix.entries_count"] == 15
    assert m["validation"]["kld_mean"] < 0.05
    plain = export(src, "q4_k_m", tmp_path / "plain", ExportOptions(extra={"imatrix": False}), validator)[1]
    assert plain["target_info"]["imatrix"] is None and "calibration" not in plain["target_info"]
    q6 = export(src, "q6_k", tmp_path / "q6", ExportOptions(keep_embeddings_fp=True), validator)[1]
    assert q6["target_info"]["tensor_types"]["F16"] == 1 and q6["validation"]["kld_mean"] < m["validation"]["kld_mean"]


# --- lossless re-export of a GGUF source ------------------------------------------------------------

def test_gguf_source_blocks_are_copied_bit_for_bit(tiny_model, tmp_path):
    first = export(tiny_model, "q4_1", tmp_path / "a")[0] / "model.gguf"
    source = load_model(first)  # a Q4_1 GGUF source (dequantized to fp32 for the reference)
    again, m = export(source, "q4_1", tmp_path / "b")
    assert m["target_info"]["copied_from_source"] == len(tensor_table(first))
    a, b = tensor_table(first), tensor_table(again / "model.gguf")
    for x, y in zip(a, b):
        assert (x.name, x.type) == (y.name, y.type)
        assert np.array_equal(tensor_bytes(first, x), tensor_bytes(again / "model.gguf", y)), x.name
    q8 = export(source, "q8_0", tmp_path / "c")[1]["target_info"]
    assert q8["copied_from_source"] == 2 * 2 + 1 + 1  # norms and the Q8_0 embedding; Q4_1 matrices requantized
    assert q8["grid_requantized"] == 2 * 7  # ... on their source grid (requant.py)
    q51 = load_model(export(source, "q5_1", tmp_path / "f")[0] / "model.gguf")  # Q4_1 -> Q5_1 is exact
    assert all(torch.equal(q51.state_dict[k], v) for k, v in source.state_dict.items())
    # k-quants: where llama.cpp would fall back (64-wide rows) to Q5_0, the source's Q4_1 blocks are kept
    km = export(source, "q4_k_m", tmp_path / "d")[1]["target_info"]
    assert km["source_blocks_kept"] == 2 * 7 and km["copied_from_source"] == len(a)
    pure = export(source, "q4_k_m", tmp_path / "e", ExportOptions(extra={"keep_source_blocks": False, "imatrix": False}))
    types = {t.name: t.type for t in tensor_table(pure[0] / "model.gguf")}
    assert (types["blk.0.attn_q.weight"], types["blk.0.attn_v.weight"]) == ("Q5_0", "Q8_0")  # llama.cpp's fallback


@pytest.mark.parametrize("src", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_requantization_on_the_source_grid(src):
    """Checked bit for bit through gguf-py's own dequantizers: exact where the target holds the source's
    levels, and never worse than llama.cpp's plain rounding for Q8_0."""
    from smolship.targets.gguf.requant import EXACT, q5_exact, q8_0_on_grid

    T = gguf.GGMLQuantizationType
    x = np.random.default_rng(0).standard_normal((32, 256)).astype(np.float32)
    raw = gguf.quants.quantize(x, T[src])
    v = gguf.quants.dequantize(raw, T[src])
    for s, dst in EXACT:
        if s == src:
            assert np.array_equal(gguf.quants.dequantize(q5_exact(v, raw, src, dst), T[dst]), v)
    grid = gguf.quants.dequantize(q8_0_on_grid(v, raw, src), T.Q8_0)
    plain = gguf.quants.dequantize(gguf.quants.quantize(v, T.Q8_0), T.Q8_0)
    err, err_plain = ((grid - v) ** 2).sum(), ((plain - v) ** 2).sum()
    assert err <= err_plain and (err == 0 if src in ("Q4_0", "Q5_0") else err < 0.5 * err_plain)


# --- bad input --------------------------------------------------------------------------------------

def test_type_that_does_not_fit_the_model_is_refused(tiny_model, tmp_path):
    cfg = LlamaConfig(hidden_size=48, intermediate_size=96, num_layers=1, num_heads=3, num_kv_heads=1, head_dim=16,
                      max_position_embeddings=128)
    odd = make_source(tiny_model, cfg, "odd")
    for name in ("q4_0", "q4_k_m"):
        with pytest.raises(SmolshipError, match="blocks of 32"):
            export(odd, name, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert export(odd, "f16", tmp_path / "ok")[0].is_dir()  # float types fit any shape


def test_gguf_of_another_architecture_is_refused(tiny_model, tiny_f32, tmp_path):
    foreign = dataclasses.replace(tiny_model, gguf=GGUFFile(tmp_path / "qwen.gguf", {"general.architecture": "qwen2"}, {}))
    with pytest.raises(SmolshipError, match="'qwen2' model"):
        export(foreign, "q8_0", tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())
    data = (tiny_f32[0] / "model.gguf").read_bytes().replace(b"llama", b"qwen2", 1)  # general.architecture value
    (tmp_path / "qwen.gguf").write_bytes(data)
    with pytest.raises(SmolshipError, match="qwen2"):
        load_model(tmp_path / "qwen.gguf")


def test_corrupt_files_are_refused(tiny_f32, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_f32[0], bundle)
    whole = (bundle / "model.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SmolshipError, match="not a readable GGUF"):
        load_model(tmp_path / "cut.gguf")
    (bundle / "model.gguf").write_bytes(whole[: len(whole) // 2])
    manifest = json.loads((bundle / "manifest.json").read_text())
    with pytest.raises(SmolshipError, match="could not load"):
        TARGET.load_runner(bundle, manifest)
    with pytest.raises(SmolshipError, match="no recipe"):
        TARGET.export(None, dataclasses.replace(recipe("q8_0"), name="q3_k_s"), tmp_path, ExportOptions())


def test_tensor_index_refuses_truncated_or_lying_headers(tmp_path):
    """The index walks headers with the one bounded walker (exporter/gguf_header.py) and keeps every tensor
    inside the file: a file cut short or a length pointing past its end is a SmolshipError that says what."""
    import struct

    good = tmp_path / "good.gguf"
    w = gguf.GGUFWriter(str(good), "llama")
    w.add_token_list(["a", "b", "c"])
    w.add_tensor("token_embd.weight", np.ones((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = good.read_bytes()
    (entry,) = tensor_table(good)
    assert (entry.name, entry.type, entry.shape, entry.nbytes) == ("token_embd.weight", "F32", (32, 4), 512)
    assert (tensor_bytes(good, entry).view(np.float32) == 1).all()
    name, tokens = data.rindex(b"token_embd.weight"), data.index(b"tokenizer.ggml.tokens") + 21
    lies = {  # file bytes -> what the refusal must say
        data[:-64]: "ends at byte .* \\(truncated\\)",  # the last tensor's data cut short
        data[: name + 19]: "header is truncated",  # cut inside the tensor table
        data[: name - 8] + struct.pack("<Q", 2**62) + data[name:]: "a tensor name claims 4611686018427387904 bytes",
        data[: tokens + 8] + struct.pack("<Q", 2**40) + data[tokens + 16:]: "claims an array of 1099511627776",
        data[: name + 17] + struct.pack("<I", 5) + data[name + 21:]: "5 dimensions",
        data[: name + 37] + struct.pack("<I", 999) + data[name + 41:]: "unknown ggml type 999",
    }
    for i, (body, words) in enumerate(lies.items()):
        bad = tmp_path / f"bad{i}.gguf"
        bad.write_bytes(body)
        with pytest.raises(SmolshipError, match=f"not a readable GGUF file: .*{words}") as err:
            tensor_table(bad)
        assert "re-export" in err.value.fix


def test_cli_export_of_a_corrupt_gguf_writes_nothing(tmp_path):
    import subprocess
    import sys

    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", "from smolship.cli.app import main; main()", "export",
                           str(tmp_path / "bad.gguf"), "--target", "gguf", "--quant", "q8_0", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert "not a readable GGUF" in proc.stdout + proc.stderr
    assert not out.exists()


# --- the real 135M ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_bundles(tmp_path_factory):
    return tmp_path_factory.mktemp("real")


@pytest.mark.slow
def test_real_f16_matches_the_reference_and_the_bare_file_answers_paris(default_model, default_validator, real_bundles):
    import llama_cpp

    bundle, m = export(default_model, "f16", real_bundles, validator=default_validator)
    v = m["validation"]
    assert v["top1_agreement"] >= 0.995 and v["kld_mean"] <= 1e-4, v
    # plain llama.cpp, chat template and tokenizer from the file alone: no smolship code in the loop.
    # (The reference's first answer token wins by 0.08 logits, "The" over "L"; llama.cpp's 8-bit activation
    # rounding flips that tie for the source Q4_1 file itself, so the faithful f16 file is the one asked.)
    llm = llama_cpp.Llama(str(bundle / "model.gguf"), n_ctx=256, verbose=False)
    reply = llm.create_chat_completion([{"role": "user", "content": "What is the capital of France?"}],
                                       temperature=0.0, max_tokens=24)
    llm.close()
    assert "Paris" in reply["choices"][0]["message"]["content"], reply


@pytest.mark.slow
def test_real_q8_0_parity(default_model, default_validator, real_bundles):
    _, m = export(default_model, "q8_0", real_bundles, validator=default_validator)
    assert m["target_info"]["grid_requantized"] == 210  # every Q4_1 matrix re-quantized on its own grid
    assert m["validation"]["kld_mean"] <= 0.004, m["validation"]


@pytest.mark.slow
def test_real_q4_1_is_the_source_file_block_for_block(default_model, real_bundles):
    from smolship.targets.gguf.runner import LlamaCppRunner

    bundle, m = export(default_model, "q4_1", real_bundles)
    src, out = default_model_path(), bundle / "model.gguf"
    pairs = list(zip(tensor_table(src), tensor_table(out)))
    assert len(pairs) == 272 and m["target_info"]["copied_from_source"] == 272
    for x, y in pairs:
        assert (x.name, x.type) == (y.name, y.type) and np.array_equal(tensor_bytes(src, x), tensor_bytes(out, y))
    # same blocks -> llama.cpp computes the same logits as on the source file, so the same kld_mean
    ids = default_model.tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    a, b = LlamaCppRunner(src, 128), LlamaCppRunner(out, 128)
    assert np.array_equal(a.prefill(ids), b.prefill(ids)) and np.array_equal(a.decode(ids[-1]), b.decode(ids[-1]))
    a.close(), b.close()
