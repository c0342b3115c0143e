"""What the phone apps read, checked with the apps' own runtimes, and the example apps checked against bundles.

- ExecuTorch: the C++ LLM runner (`TextLLMRunner`, which Android's LlmModule and iOS's TextRunner wrap)
  runs the bundle with a prompt built from chat_format.json and each app's own settings (read out of its
  sources: tests/app_settings.py), in the runtime version that app pins; the app's history policy
  (History.kt, compiled with Debian's kotlinc) keeps a long chat inside the context.
- onnxruntime-genai: loads a folder holding only the files the model card tells an app to copy.
- Core ML: the .mlpackage spec against what swift-transformers' LanguageModel.swift reads, the
  converted graph driven with exactly LanguageModel's calls, the tokenizer folder through `tokenizers`.
- GGUF: the metadata the llama.cpp apps read.
- examples/android and examples/ios: the sources parse (tree-sitter) and name only files and keys
  the bundles contain; their READMEs' push commands name real bundle files.
Fast tests use random:tiny; the slow one runs the real 135M 8da4w bundle the apps load (a session fixture).
The API contract of the app sources against the pinned runtimes' signatures is tests/test_app_sources.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from smolship import chat_format, model_card
from smolship.export import bundle_name, export_bundle
from smolship.generate import generate
from smolship.targets import ExportOptions, get_target
from smolship.targets.onnx import genai_loop
from smolship.validation import platforms as P
from smolship.validation import text_runner
from app_settings import android_runner_config, ios_runner_config, kotlin_constants

ROOT = Path(__file__).resolve().parents[1]
ANDROID, IOS = ROOT / "examples" / "android", ROOT / "examples" / "ios"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
from conftest import TINY_RECIPES as RECIPES  # noqa: E402  (the tiny bundles of the shared tiny_bundle fixture)


def card_files(card: str) -> set[str]:
    """Bundle paths a model card names (backticked or in commands); device paths give their file name."""
    found = re.findall(r"([\w./-]+\.(?:pte|json|onnx|onnx_data|mlpackage|gguf))\b", card)
    return {f.rsplit("/", 1)[-1] if f.startswith("/") else f for f in found}


# --- every bundle: chat_format.json, manifest, model card ------------------------------------------
@pytest.mark.parametrize("target", list(RECIPES))
def test_bundle_carries_chat_format_and_model_card(tiny_bundle, tiny_model, target):
    path, manifest = tiny_bundle(target)
    fmt = chat_format.read(path)
    assert manifest["chat_format"] == json.loads((path / chat_format.FILE).read_text())
    assert fmt.render(QUESTION) == tiny_model.tokenizer.render_chat(QUESTION)  # the file, read back, renders right
    assert {chat_format.FILE, model_card.CARD} <= set(manifest["files"])  # listed with their sha256
    card = (path / model_card.CARD).read_text()
    assert fmt.render(QUESTION) in card and f"{manifest['source']['name']}: {target}" in card
    renames = {model_card.renamed_pte(app, RECIPES[target]) for app in ("qwen", "smollm3")}
    missing = {f for f in card_files(card) if not (path / f).exists()} - renames
    assert not missing, f"the card names files the bundle lacks: {missing}"
    assert all(f"`{e}`" in card or f" {e} " in card for e in model_card.app_entries(manifest))
    if target == "executorch":  # the official apps match these in the file name (ModelType.kt, ContentView.swift)
        assert renames <= card_files(card) and all(("qwen" in r) != ("smollm3" in r) for r in renames)
    v = manifest["validation"]
    if v:  # the card's figures are the manifest's
        assert f"| kld_mean | {v['kld_mean']:.4g} |" in card


# --- ExecuTorch: the C++ runner of LlmModule / TextRunner, with each app's own settings and runtime --
APPS = ("android", "ios")


def app_platform(app: str):
    """The runtime build the app links: None when it is the exporter's own version, else its wheel."""
    pinned = next(rt for rt in P.APP_RUNTIMES if rt.app == app)
    return None if pinned.version == P.installed_version("executorch") else P.app_runtime("executorch", pinned.version)


@pytest.fixture(scope="module")
def app_bundle(tiny_model, tmp_path_factory):
    """A tiny ExecuTorch bundle with room for the apps' reply budget (context 512, prefill chunks of 128)."""
    path, _ = export_bundle(tiny_model, "executorch", get_target("executorch").recipes["fp32"],
                            tmp_path_factory.mktemp("app_bundle"),
                            ExportOptions(max_seq_len=512, extra={"max_prefill_len": 128}), validator=None)
    return path


def app_generate(app: str, path: Path, prompt: str) -> tuple[dict, dict]:
    """TextLLMRunner as the app drives it: its settings read out of its sources, in its pinned runtime."""
    context = chat_format.read(path).max_seq_len
    config = android_runner_config(prompt, context) if app == "android" else ios_runner_config(context)
    return text_runner.generate(path, prompt, app_platform(app), **config), config


@pytest.mark.parametrize("app", APPS)
def test_app_settings_decode_greedily_without_echo_and_stop_on_the_bundle_ids(app_bundle, tiny_model, app):
    """Each app's runner settings (its sources), in the runtime it pins, on the tiny bundle: the pieces are the
    greedy reply smolship's own loop decodes (a sampling temperature or an echoed prompt would differ), and
    the runner stops on the ids model.pte carries."""
    path = app_bundle
    manifest = json.loads((path / "manifest.json").read_text())
    fmt = chat_format.read(path)
    prompt = fmt.render(QUESTION)
    result, config = app_generate(app, path, prompt)
    assert result["error"] is None, result
    pinned = next(rt for rt in P.APP_RUNTIMES if rt.app == app)
    assert result["executorch"] == pinned.version  # the app's runtime ran, not the exporter's
    ids = tiny_model.tokenizer.encode(prompt, add_bos=False)
    assert result["stats"]["num_prompt_tokens"] == len(ids)
    runner = get_target("executorch").load_runner(path, manifest)
    try:
        assert sorted(runner.constant("get_eos_ids")) == sorted(fmt.stop_ids)
        ours = list(generate(runner, ids, len(result["pieces"]), stop_ids=fmt.stop_ids))  # a piece per token
    finally:
        runner.close()
    assert "".join(result["pieces"]) == tiny_model.tokenizer.decode(ours, skip_special_tokens=False), config


def test_echo_and_sampling_would_be_caught(tiny_bundle):
    """The defects the iOS app had (upstream defaults: echo on, temperature 0.8) change what the runner hands
    the app, so the test above fails on them."""
    path, _ = tiny_bundle("executorch")
    prompt = chat_format.read(path).render(QUESTION)
    greedy = text_runner.generate(path, prompt, echo=False, temperature=0.0, max_new_tokens=12, seq_len=128)
    echoed = text_runner.generate(path, prompt, echo=True, temperature=0.0, max_new_tokens=12, seq_len=128)
    assert echoed["pieces"][0] == prompt and "".join(echoed["pieces"]) != "".join(greedy["pieces"])
    sampled = [text_runner.generate(path, prompt, echo=False, temperature=0.8, max_new_tokens=12, seq_len=128)
               for _ in range(3)]
    assert any("".join(s["pieces"]) != "".join(greedy["pieces"]) for s in sampled)


# The app's own history policy (History.kt's fitHistory), compiled with Debian's kotlinc (1.3: no trailing
# commas, which are stripped) and run on the JVM; the token count it is given is the app's: the UTF-8 length of
# chat_format's rendering of each candidate tail. Swift has no compiler here: iOS's History.swift states the
# same policy and is unverified at runtime.
FIT_HARNESS = """package org.smolship.chat
fun main(args: Array<String>) {
    val lines = generateSequence(::readLine).toList()
    val budget = lines[0].toInt()
    val lengths = lines[1].split(" ").map { it.toInt() }  // UTF-8 length of the rendered tail, by its size
    val messages = lines.drop(2).mapIndexed { i, role -> ChatMessage(role, i.toString()) }
    val fitted = fitHistory(messages, budget) { lengths[it.size] }
    println(fitted?.size ?: -1)
}
"""


@pytest.fixture(scope="module")
def android_fit_history(tmp_path_factory):
    """A function (messages, budget, render) -> kept tail or None, running the app's History.kt."""
    import subprocess

    if not shutil.which("kotlinc"):
        pytest.fail("kotlinc is missing: `make setup-js` installs Debian's kotlin (apt) for the app's history test")
    work = tmp_path_factory.mktemp("kotlin")
    src = ANDROID / "app/src/main/java/org/smolship/chat"
    (work / "History.kt").write_text(re.sub(r",(\s*\))", r"\1", (src / "History.kt").read_text()))
    message = re.search(r"^data class ChatMessage\(.*\)$", (src / "ChatFormat.kt").read_text(), re.M).group(0)
    (work / "Message.kt").write_text(f"package org.smolship.chat\n{message}\n")
    (work / "Main.kt").write_text(FIT_HARNESS)
    subprocess.run(["kotlinc", "-nowarn", "History.kt", "Message.kt", "Main.kt", "-include-runtime", "-d", "fit.jar"],
                   cwd=work, check=True, capture_output=True)

    def fit(messages: list[dict], budget: int, render) -> list[dict] | None:
        system = 1 if messages and messages[0]["role"] == "system" else 0
        # a tail of size k is the system message (if any) + the last k - system messages
        lengths = [len(render(messages[:system] + messages[len(messages) - (k - system):]).encode()) if k >= system
                   else 0 for k in range(len(messages) + 1)]
        stdin = "\n".join([str(budget), " ".join(map(str, lengths)), *(m["role"] for m in messages)]) + "\n"
        kept = int(subprocess.run(["java", "-jar", str(work / "fit.jar")], input=stdin, capture_output=True,
                                  text=True, check=True).stdout.strip())
        return None if kept < 0 else messages[:system] + messages[len(messages) - (kept - system):]
    return fit


@pytest.mark.slow
def test_a_chat_longer_than_the_context_is_trimmed_never_silent(real_executorch_8da4w, android_fit_history):
    """Turn after turn past the context (512 here), with the app's history policy and settings, in each app's
    runtime, on the bundle the apps load: every turn gets a reply (older turns dropped), and a message longer
    than the context is the app's clear refusal, never a runner error or an empty reply. Before the fix the
    app re-sent the whole history at seq_len 768. (The real model: a random one emits partial UTF-8 pieces
    that the runner's Python binding cannot hand over as text.)"""
    path, _ = real_executorch_8da4w
    fmt = chat_format.read(path)
    budget = fmt.max_seq_len - kotlin_constants()["MAX_NEW_TOKENS"]
    tokens = Tokenizer.from_file(str(path / "tokenizer.json"))
    history, dropped = [], []
    for turn in range(24):  # until the whole conversation is longer than the context, and was trimmed
        history.append({"role": "user", "content": f"Tell me fact number {turn + 1} about the sea, in one sentence."})
        fitted = android_fit_history(history, budget, fmt.render)
        assert fitted is not None and fitted[-1] == history[-1]
        dropped.append(len(history) - len(fitted))
        for app in APPS:
            result, _ = app_generate(app, path, fmt.render(fitted))
            assert result["error"] is None and result["stats"]["num_generated_tokens"] > 0, (app, turn, result)
        history.append({"role": "assistant", "content": "".join(result["pieces"]).replace(fmt.turn_end, "")})
        if len(tokens.encode(fmt.render(history), add_special_tokens=False).ids) > fmt.max_seq_len and dropped[-1]:
            break
    else:
        pytest.fail(f"24 turns stayed inside the {fmt.max_seq_len}-token context: the test proves nothing")
    assert dropped[0] == 0  # a short chat is sent whole
    whole = text_runner.generate(path, fmt.render(history), echo=False, temperature=0.0, seq_len=768)
    assert whole["error"] and not whole["pieces"]  # what the old app hit: a refusal it showed as an empty reply
    huge = history + [{"role": "user", "content": "x " * budget}]
    assert android_fit_history(huge, budget, fmt.render) is None  # -> ChatException("... too long ...")
    assert "too long for the model's context" in (ANDROID / "app/src/main/java/org/smolship/chat/ChatEngine.kt").read_text()


# The official ExecuTorch apps' templates, transcribed from their sources (meta-pytorch/executorch-examples):
# LlamaDemo PromptFormat.kt, QWEN_3 system + user templates (thinking token ""), for a file name with "qwen";
# etLLM Constants.swift smolLm3PromptTemplate, for a file name with "smollm3".
LLAMADEMO_QWEN3 = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
ETLLM_SMOLLM3 = "<|im_start|>system\n/no_think\n<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def test_official_apps_templates_after_the_cards_renames_are_this_chat_format(tiny_bundle):
    """The card's renames make LlamaDemo / etLLM build exactly the prompt chat_format renders."""
    path, _ = tiny_bundle("executorch")
    fmt, q = chat_format.read(path), QUESTION[0]["content"]
    system = {"role": "system", "content": fmt.default_system}
    assert LLAMADEMO_QWEN3.format(system=fmt.default_system, user=q) == fmt.render([system, *QUESTION])
    assert ETLLM_SMOLLM3.format(user=q) == fmt.render([{"role": "system", "content": "/no_think\n"}, *QUESTION])
    assert fmt.turn_end == "<|im_end|>"  # both apps' stop string for those types


@pytest.mark.slow
@pytest.mark.parametrize("app", APPS)
def test_real_8da4w_bundle_answers_with_each_apps_settings_in_its_runtime(real_executorch_8da4w, app):
    """The 8da4w bundle the apps load, through ExecuTorch's own C++ runner with the app's settings (read from
    its sources) in the runtime version it pins: greedy, no echoed prompt, a right answer, then the turn end
    the apps compare and drop. Japan, not France: "What is the capital of France?" is a near tie for the
    135M in fp32 ("The" 25.33 vs "L" 25.24), while Japan keeps a 0.97-logit margin over its whole answer."""
    path, manifest = real_executorch_8da4w
    fmt = chat_format.read(path)
    prompt = fmt.render([{"role": "user", "content": "What is the capital of Japan?"}])
    result, config = app_generate(app, path, prompt)
    text = "".join(result["pieces"])
    assert result["error"] is None and not text.startswith("<|im_start|>"), result  # no echoed conversation
    assert "Tokyo" in text, text
    assert result["pieces"][-1] == fmt.turn_end == "<|im_end|>", result["pieces"][-4:]  # what the apps drop
    assert result["stats"]["num_generated_tokens"] < 64  # stopped by the program's stop ids, not by the length
    rows = {r["platform"]: r for r in manifest["validation"]["platforms"]}
    version = next(rt.version for rt in P.APP_RUNTIMES if rt.app == app)
    row = rows["native"] if version == P.installed_version("executorch") else rows[f"executorch {version}"]
    assert row["versions"]["executorch"] == version and row["kld_mean"] <= 0.06, row  # proven in that runtime
    card = (path / model_card.CARD).read_text()
    assert f"| kld_mean | {manifest['validation']['kld_mean']:.4g} |" in card and f"executorch {version}" in card


# --- onnxruntime-genai, as the phone samples load it -----------------------------------------------
def test_onnxruntime_genai_loads_only_the_files_the_card_lists(tiny_bundle, tiny_model, tmp_path):
    og = pytest.importorskip("onnxruntime_genai")
    path, manifest = tiny_bundle("onnx")
    listed = model_card.app_files(manifest)  # what the card tells the app to copy, and nothing else
    app = tmp_path / "app_files"
    app.mkdir()
    for name in listed:
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path / name, app / name)
    assert {"genai_config.json", "tokenizer.json", "tokenizer_config.json", *manifest["model_files"]} == set(
        model_card.app_entries(manifest))
    fmt = chat_format.read(path)
    model = og.Model(str(app))
    tokenizer = og.Tokenizer(model)
    ids = list(tokenizer.encode(fmt.render(QUESTION)))
    assert ids == tiny_model.tokenizer.encode(fmt.render(QUESTION), add_bos=False)
    eos = json.loads((app / "genai_config.json").read_text())["model"]["eos_token_id"]
    assert sorted(eos if isinstance(eos, list) else [eos]) == sorted(fmt.stop_ids)
    got, _ = genai_loop.greedy(model, ids, 8)
    runner = get_target("onnx").load_runner(path, manifest)
    assert got == list(generate(runner, ids, len(got)))  # the same graph through smolship's runner


# --- Core ML, as swift-transformers' LanguageModel.swift reads it -----------------------------------
def test_coreml_spec_is_what_language_model_swift_reads(tiny_bundle, tiny_model):
    pytest.importorskip("coremltools")
    import coremltools as ct
    from coremltools.proto.FeatureTypes_pb2 import ArrayFeatureType

    path, manifest = tiny_bundle("coreml")
    n, cfg = manifest["max_seq_len"], tiny_model.config
    desc = ct.models.MLModel(str(path / "model.mlpackage"), skip_model_load=True).get_spec().description
    inputs = {f.name: f.type.multiArrayType for f in desc.input}
    # Keys: inputIds, causalMask (no attentionMask: that selects another branch), logits; keyCache/valueCache states
    assert set(inputs) == {"inputIds", "causalMask"}
    assert [f.name for f in desc.output] == ["logits"]
    states = {s.name: s.type.stateType.arrayType for s in desc.state}
    assert set(states) == {"keyCache", "valueCache"}  # both or neither, else LanguageModel fatalErrors
    dtype = ArrayFeatureType.ArrayDataType
    # inputIds: MLTensor of Int32; contextRange reads the range of its last axis; the stateful class needs
    # max - min > 1 (prefill and extend with one model)
    ids = inputs["inputIds"]
    assert ids.dataType == dtype.Value("INT32") and ids.WhichOneof("ShapeFlexibility") == "shapeRange"
    ranges = [(r.lowerBound, r.upperBound) for r in ids.shapeRange.sizeRanges]
    assert ranges == [(1, 1), (1, n)] and ranges[-1][1] - ranges[-1][0] > 1
    # causalMask: MLTensor(zeros: [1, 1, 1, tokenCount + 1], scalarType: Float16) on every call
    mask = inputs["causalMask"]
    assert mask.dataType == dtype.Value("FLOAT16")
    mranges = [(r.lowerBound, r.upperBound) for r in mask.shapeRange.sizeRanges]
    assert mranges[:2] == [(1, 1), (1, 1)] and mranges[2][0] == 1 and mranges[3] == (1, n)
    for s in states.values():
        assert s.dataType == dtype.Value("FLOAT16")
        assert list(s.shape) == [cfg.num_layers, 1, cfg.num_kv_heads, n, cfg.head_dim]
    # modelName (tokenizer look-up when the app passes none) comes from this metadata key
    assert desc.metadata.userDefined["co.huggingface.exporters.name"]


def test_coreml_graph_answers_language_model_swift_calls_like_the_reference(tiny_model):
    """LanguageModelWithStatefulKVCache sends the whole prompt with a zero [1,1,1,n+1] mask, then the last
    token with a zero [1,1,1,T+1] mask (T = tokens so far); fresh states are zeros (MLModel.makeState).
    The traced graph (what ct.convert converts) must give the reference's next-token logits."""
    pytest.importorskip("coremltools")
    from smolship.targets.coreml.export import trace

    seq = 64
    traced = trace(tiny_model, seq)
    for name in ("keyCache", "valueCache"):
        getattr(traced, name).zero_()  # tracing ran an example call; a new MLState is zeros
    ref = tiny_model.build(seq)
    ids = torch.randint(0, tiny_model.config.vocab_size, (1, 14), generator=torch.Generator().manual_seed(2))
    n = 9
    with torch.no_grad():
        want = ref(ids, torch.tensor([0]))[0]  # (14, vocab), causal, one call
        got = traced(ids[:, :n].int(), torch.zeros(1, 1, 1, n + 1))[0, -1]
        # fp32 both; RoPE positions are shifted by one slot (relative angles equal): float noise only
        torch.testing.assert_close(got, want[n - 1], atol=1e-4, rtol=1e-4)
        for t in range(n, 14):
            got = traced(ids[:, t:t + 1].int(), torch.zeros(1, 1, 1, t + 2))[0, -1]
            torch.testing.assert_close(got, want[t], atol=1e-4, rtol=1e-4)


def test_coreml_tokenizer_folder_loads_with_tokenizers(tiny_bundle, tiny_model):
    """AutoTokenizer.from(modelFolder:) reads config.json, tokenizer.json, tokenizer_config.json."""
    from tokenizers import Tokenizer

    path, _ = tiny_bundle("coreml")
    fmt = chat_format.read(path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    prompt = fmt.render(QUESTION)
    assert tok.encode(prompt, add_special_tokens=False).ids == tiny_model.tokenizer.encode(prompt, add_bos=False)
    tcfg = json.loads((path / "tokenizer_config.json").read_text())
    assert tcfg["chat_template"] == tiny_model.tokenizer.chat_template
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["eos_token_id"] == fmt.stop_ids[0]


# --- GGUF: what the llama.cpp apps read from the file --------------------------------------------
def test_gguf_metadata_has_template_and_stop(tiny_bundle, tiny_model):
    """llama.cpp (what llama.android / llama.swiftui link) reads the template and EOS from the file."""
    from llama_cpp import Llama

    path, manifest = tiny_bundle("gguf")
    meta = Llama(str(path / manifest["model_files"][0]), vocab_only=True, verbose=False).metadata
    assert meta["tokenizer.chat_template"] == tiny_model.tokenizer.chat_template
    assert int(meta["tokenizer.ggml.eos_token_id"]) == chat_format.read(path).stop_ids[0]


# --- the example apps' sources ---------------------------------------------------------------------
def _parser(language: str):
    from tree_sitter import Language, Parser

    module = pytest.importorskip(f"tree_sitter_{language}")
    return Parser(Language(module.language()))


def _strings(node, source: bytes) -> list[str]:
    """Plain string literals (no interpolation) of a Kotlin or Swift syntax tree."""
    out = []
    if node.type in ("string_literal", "line_string_literal"):
        parts = [c for c in node.named_children]
        if not any("interpolat" in c.type for c in parts):
            out.append("".join(source[c.start_byte:c.end_byte].decode() for c in parts))
        return out
    for child in node.children:
        out += _strings(child, source)
    return out


def _parse(language: str, files: list[Path]) -> dict[Path, list[str]]:
    parser = _parser(language)
    found = {}
    for f in files:
        src = f.read_bytes()
        tree = parser.parse(src)
        assert not tree.root_node.has_error, f"{f} does not parse as {language}"
        found[f] = _strings(tree.root_node, src)
    return found


def _keys(d) -> set[str]:
    if isinstance(d, dict):
        return set(d) | {k for v in d.values() for k in _keys(v)}
    return set()


FILE_LIKE = re.compile(r"^[\w.-]+\.(pte|json|mlpackage|onnx|gguf)$")
KEY_LIKE = re.compile(r"^[a-z][a-z0-9_]*$")


def _check_names(strings: list[str], bundles: list[Path], keys: set[str], where: Path) -> None:
    for s in strings:
        if FILE_LIKE.match(s):
            assert any((b / s).exists() for b in bundles), f"{where.name} names '{s}', which no bundle holds"
        elif KEY_LIKE.match(s):
            assert s in keys, f"{where.name} reads key '{s}', which chat_format.json lacks"


def test_android_sources_parse_and_name_real_files_and_keys(tiny_bundle):
    path, manifest = tiny_bundle("executorch")
    found = _parse("kotlin", sorted(ANDROID.rglob("*.kt")) + sorted(ANDROID.rglob("*.kts")))
    keys = _keys(json.loads((path / chat_format.FILE).read_text()))
    for f, strings in found.items():
        if f.suffix == ".kt" and f.name != "MainActivity.kt":  # UI strings live in MainActivity
            _check_names(strings, [path], keys, f)
    engine = "\n".join(found[ANDROID / "app/src/main/java/org/smolship/chat/ChatEngine.kt"])
    assert {"model.pte", "tokenizer.json", "chat_format.json", "/data/local/tmp/smolship"} <= set(engine.split("\n"))
    reply_budget = kotlin_constants()["MAX_NEW_TOKENS"]
    assert reply_budget < ExportOptions().max_seq_len  # leaves room for a prompt in the default export's context
    # the README's push commands push real bundle files to the folder the app reads
    readme = (ANDROID / "README.md").read_text()
    pushed = re.findall(r"adb push out/executorch-8da4w/(\S+) (\S+)", readme)
    assert {f for f, _ in pushed} == {"model.pte", "tokenizer.json", "chat_format.json"}
    assert all((path / f).exists() and dest == "/data/local/tmp/smolship/" for f, dest in pushed)
    assert "executorch-8da4w" == bundle_name("executorch", "8da4w")
    assert "8da4w" in get_target("executorch").default_recipes


def test_ios_sources_parse_and_name_real_files_and_keys(tiny_bundle):
    et_path, _ = tiny_bundle("executorch")
    cm_path, _ = tiny_bundle("coreml")
    found = _parse("swift", sorted(IOS.rglob("*.swift")))
    keys = _keys(json.loads((et_path / chat_format.FILE).read_text()))
    for f, strings in found.items():
        if f.name in ("ChatFormat.swift", "Backends.swift"):
            _check_names(strings, [et_path, cm_path], keys, f)
    backends = found[IOS / "SmolshipChat/Backends.swift"]
    assert {"model.mlpackage", "model.pte", "tokenizer.json"} <= set(backends)
    # the folder names the app looks for are smolship's bundle names of default recipes
    assert {bundle_name("coreml", "w4"), bundle_name("executorch", "8da4w")} <= set(backends)
    assert "w4" in get_target("coreml").default_recipes
    # AutoTokenizer.from(modelFolder:) and the app read these beside model.mlpackage
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_format.json"):
        assert (cm_path / name).is_file(), name
    readme = (IOS / "README.md").read_text()
    for name in set(re.findall(r"Bundles/(?:coreml-w4|executorch-8da4w)/([\w.-]+)", readme)):
        assert (cm_path / name).exists() or (et_path / name).exists(), name
