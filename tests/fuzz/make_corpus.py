"""Write the seed corpus under tests/fuzz/corpus/ (committed; rerun only to change the seeds).

Seeds are tiny valid files of each format plus the hostile cases the issue names (a header that claims
10^12 elements). Crashes found by run.py are added to corpus/<reader>/ by hand, named crash-<what>.

    .venv/bin/python tests/fuzz/make_corpus.py
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

CORPUS = Path(__file__).parent / "corpus"
sys.path.insert(0, str(Path(__file__).parent))
from harnesses import TOKENIZER_SPLIT  # noqa: E402

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "a", "b", "H", "e", "l", "o", "Ġ", "ab", "He", "ll", "llo", "Hello"]
MERGES = ["a b", "H e", "l l", "ll o", "He llo"]
TYPES = [3, 3, 3, 3] + [1] * 12
HIDDEN, HEADS, KV, FFN = 32, 2, 1, 64


def write(reader: str, name: str, data: bytes) -> None:
    (CORPUS / reader).mkdir(parents=True, exist_ok=True)
    (CORPUS / reader / name).write_bytes(data)


def tiny_gguf(path: Path) -> bytes:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("fuzz-tiny")
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(1)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_merges(MERGES)
    w.add_token_types(TYPES)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_chat_template(CHATML)
    rng = np.random.default_rng(0)
    hd = HIDDEN // HEADS
    shapes = {"blk.0.attn_norm.weight": (HIDDEN,), "blk.0.attn_q.weight": (HIDDEN, HIDDEN),
              "blk.0.attn_k.weight": (KV * hd, HIDDEN), "blk.0.attn_v.weight": (KV * hd, HIDDEN),
              "blk.0.attn_output.weight": (HIDDEN, HIDDEN), "blk.0.ffn_norm.weight": (HIDDEN,),
              "blk.0.ffn_gate.weight": (FFN, HIDDEN), "blk.0.ffn_up.weight": (FFN, HIDDEN),
              "blk.0.ffn_down.weight": (HIDDEN, FFN), "output_norm.weight": (HIDDEN,)}
    emb = rng.standard_normal((len(TOKENS), HIDDEN)).astype(np.float32)
    q8 = gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("token_embd.weight", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    for name, shape in shapes.items():
        arr = rng.standard_normal(shape).astype(np.float32)
        w.add_tensor(name, arr if len(shape) == 1 else arr.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def huge_gguf_tensor(data: bytes) -> bytes:
    """The tiny GGUF with blk.0.ffn_up.weight's dims rewritten to 10^6 x 10^6 (10^12 elements)."""
    name = b"blk.0.ffn_up.weight"
    at = data.index(name) + len(name)
    (n_dims,) = struct.unpack_from("<I", data, at)
    dims = struct.pack("<" + "Q" * n_dims, *([10**6] * n_dims))
    return data[:at + 4] + dims + data[at + 4 + 8 * n_dims:]


def safetensors_file(header: dict, payload: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + payload


def main() -> None:
    import tempfile

    from safetensors.numpy import save

    from smolship.exporter.config import PRESETS
    from smolship.exporter.tokenizer import tokenizer_from_gguf_fields

    with tempfile.TemporaryDirectory() as tmp:
        g = tiny_gguf(Path(tmp) / "tiny.gguf")
    write("gguf", "tiny-llama.gguf", g)
    write("gguf", "huge-tensor-claim.gguf", huge_gguf_tensor(g))
    write("gguf", "truncated.gguf", g[: len(g) // 2])

    st = save({"model.embed_tokens.weight": np.zeros((4, 8), np.float32), "model.norm.weight": np.ones(8, np.float16)},
              metadata={"format": "pt"})
    write("safetensors", "tiny.safetensors", st)
    write("safetensors", "huge-shape-claim.safetensors",
          safetensors_file({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 8]}}, b"\0" * 8))
    write("safetensors", "huge-offsets-claim.safetensors",
          safetensors_file({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}, b"\0" * 8))

    write("config", "smollm2-135m.json", json.dumps(PRESETS["smollm2-135m"].to_hf(), indent=2).encode())
    write("config", "tiny.json", json.dumps(PRESETS["tiny"].to_hf()).encode())

    fields = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": TOKENS,
              "tokenizer.ggml.merges": MERGES, "tokenizer.ggml.token_type": TYPES,
              "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1, "tokenizer.chat_template": CHATML}
    tok = tokenizer_from_gguf_fields(fields)
    tok_json = tok.tokenizer.to_str().encode()
    cfg = {"bos_token": "<s>", "eos_token": "<|im_end|>", "add_bos_token": False, "chat_template": CHATML}
    write("tokenizer", "tiny-with-config", json.dumps(cfg).encode() + TOKENIZER_SPLIT + tok_json)
    write("tokenizer", "tiny-no-config", json.dumps({"eos_token": "</s>"}).encode() + TOKENIZER_SPLIT + tok_json)

    write("template", "chatml.jinja", CHATML.encode())
    write("template", "features.jinja", (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{% set ns.n = ns.n + 1 %}{{ m.content | trim | tojson }}{{ bos_token ~ eos_token }}{% endfor %}"
        "{% if ns.n > 9 %}{{ raise_exception('too many') }}{% endif %}{{ (messages | length) * 2 }}"
        "{% for i in range(3) %}{{ 'x' * i }}{% endfor %}").encode())


if __name__ == "__main__":
    main()
