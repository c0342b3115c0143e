"""examples/node: our bundles in Node's own clients, unchanged.

* transformers.js (onnxruntime-node, CPU) loads the ONNX int4 bundle folder as exported and answers the
  France question through the bundle's chat template, stopping at `<|im_end|>`;
* node-llama-cpp (prebuilt llama.cpp from npm) loads the GGUF file alone, renders the chat template
  stored in it and stops at its end-of-generation token.

Needs node and `bash examples/setup-js.sh` (npm ci from the lockfiles); slow: real 135M weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "examples" / "node"
QUESTION = "What is the capital of France?"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")]


def run_node(script: str, *args: str, timeout: int = 240) -> dict:
    if not (NODE_DIR / "node_modules").is_dir():
        pytest.fail("examples/node/node_modules is missing: run `bash examples/setup-js.sh` first")
    env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
    proc = subprocess.run(["node", str(NODE_DIR / script), *args, "--json"], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_transformers_js_generates_what_native_onnxruntime_generates(js_int4_bundle, default_model):
    """transformers.js on onnxruntime-node loads the folder unchanged (growing KV cache, GroupQueryAttention)
    and decodes the same greedy tokens as smolship's runner (genai's shared-buffer loop) on the same graph.

    Not "Paris": the int4 recipe's int8 activations flip this prompt's first token in every native ONNX
    Runtime client (genai, Python, Node: "L'Étoile, ..."; see test_target_onnx); the browser, whose WASM
    MatMulNBits keeps float activations, answers Paris (test_web)."""
    import numpy as np

    from smolship.targets import get_target

    path, manifest, _ = js_int4_bundle
    assert json.loads((path / "config.json").read_text())["transformers.js_config"]["dtype"] == "q4"
    n = 24
    got = run_node("chat.mjs", str(path), QUESTION, "--max-new-tokens", str(n), "--threads", "2")
    tok = default_model.tokenizer
    runner = get_target("onnx").load_runner(path, manifest, threads=2)
    logits = runner.prefill(tok.encode_chat([{"role": "user", "content": QUESTION}]))[-1]
    ours = []
    for _ in range(n):
        ours.append(int(np.argmax(logits)))
        if ours[-1] in tok.stop_ids:
            break
        logits = runner.decode(ours[-1])
    assert got["answer"] == tok.decode(ours).strip(), (got, tok.decode(ours))
    assert got["decode_tok_s"] and got["decode_tok_s"] > 0.5, got


@pytest.fixture(scope="module")
def gguf_q8_bundle(default_model, tmp_path_factory):
    from smolship.export import export_bundle
    from smolship.targets import ExportOptions, get_target

    pytest.importorskip("llama_cpp")
    out = tmp_path_factory.mktemp("node_gguf")
    return export_bundle(default_model, "gguf", get_target("gguf").recipes["q8_0"], out,
                         ExportOptions(max_seq_len=512), validator=None)  # the client is under test here


def test_node_llama_cpp_answers_from_the_gguf_file_alone(gguf_q8_bundle):
    path, _ = gguf_q8_bundle
    ggufs = list(path.glob("*.gguf"))
    assert len(ggufs) == 1
    got = run_node("gguf_chat.mjs", str(ggufs[0]), QUESTION, "--max-new-tokens", "48", "--threads", "2")
    assert got["chat_wrapper"] == "JinjaTemplate", got  # the template stored in the file, not a built-in guess
    assert "Paris" in got["answer"], got
    assert got["stop_reason"] == "eogToken" and got["eos_token"] == "<|im_end|>", got
