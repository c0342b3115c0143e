"""The example apps' calls into their runtimes, checked against the pinned runtimes' public API.

No Kotlin or Swift compiler, Android SDK or Xcode runs on smolship's machines, so nothing here compiles or
runs the apps. The sources are parsed with tree-sitter and every use of a runtime type is checked against a
signature file taken from that runtime's public sources at the pinned version (tests/app_contract/*.json:
repository, tag or commit, file paths and git blobs; README.md there describes the format):

- Android: org.pytorch imports; LlmModule constructor and method calls (name, arity, named arguments, the
  types of literal and constant arguments, a Unit result used as a value); members read off a runtime
  object; LlmCallback overrides. libs.versions.toml pins the contract's version and no fbjni.
- iOS: imports (SDK modules and modules of the SwiftPM products project.yml links); initializers, methods
  and static functions of TextRunner, Config, LanguageModel, GenerationConfig, AutoTokenizer, Tokenizer
  (labels in declaration order, defaults, trailing closures, literal and constant types, `try` for throwing
  and `await` for async calls); property reads and writes (settable, type). project.yml pins the contracts'
  versions and links only products the packages have.
- Every type name is declared in the app, imported or pinned, or listed in platform_names.json, so a
  misspelt type cannot slip past as "not a runtime call".

Unverified: overloads are told apart by arity, labels and the types literals and named constants show
(other arguments match any type); generics, nullability, conformances, Swift concurrency and the platform
SDKs are not checked. The mutation tests make the checker prove it fails on each mistake it claims to
catch. The last tests read the apps' named settings and the shapes of the review fixes (echo, temperature,
context clamp, history trimming, failed loads, late streamed text) out of the sources; how the runner
behaves with those settings is checked in ExecuTorch's C++ runner by tests/test_apps.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app_contract.checker import (  # noqa: E402  (tests/app_contract/checker.py)
    ANDROID_API, APPLE_API, APP_GRADLE, KOTLIN_DIR, LIBS_TOML, PROJECT_YML,
    Report, SWIFT_DIR, TRANSFORMERS_API, parser_for, check_android_pins, check_ios_pins,
    check_kotlin, check_swift, named, project_packages, text, walk,
)


# --- the real sources against their contracts --------------------------------------------------------
def kotlin_sources() -> dict[str, str]:
    return {f.name: f.read_text() for f in sorted(KOTLIN_DIR.glob("*.kt"))}


def swift_sources() -> dict[str, str]:
    return {f.name: f.read_text() for f in sorted(SWIFT_DIR.glob("*.swift"))}


@pytest.fixture(scope="module")
def android() -> Report:
    return check_kotlin(kotlin_sources())


@pytest.fixture(scope="module")
def ios() -> Report:
    return check_swift(swift_sources(), PROJECT_YML.read_text())


def test_contract_files_record_version_and_provenance():
    for api in (ANDROID_API, APPLE_API, TRANSFORMERS_API):
        raw = api.raw
        assert raw["schema"] == "smolship-app-contract/1" and raw["version"] and raw["source"]["repo"], raw
        assert raw["source"]["read_at"] and raw["pin"]["file"], raw["runtime"]
        for name, spec in (raw.get("classes") or raw["types"]).items():
            assert spec["path"] and re.fullmatch(r"[0-9a-f]{12}", spec["blob"]), name
    assert APPLE_API.types["Config"].props["isEchoEnabled"].settable  # the parser read the files


def test_android_sources_call_executorch_as_its_pinned_api_declares(android):
    assert android.problems == []
    # the checker resolved every runtime use the app makes, so a resolution gap cannot pass silently
    assert {"LlmModule.<init>", "LlmModule.load", "LlmModule.close", "LlmModule.resetContext", "LlmModule.generate",
            "LlmModule.stop", "LlmCallback.onResult", "LlmCallback.onError"} <= android.uses()


def test_ios_sources_call_their_runtimes_as_the_pinned_apis_declare(ios):
    assert ios.problems == []
    assert {"TextRunner.init", "TextRunner.load", "TextRunner.generate", "TextRunner.stop", "TextRunner.reset",
            "Config.init", "Config.isEchoEnabled", "Config.temperature", "Config.maximumNewTokens",
            "Config.sequenceLength", "AutoTokenizer.from", "LanguageModel.loadCompiled", "LanguageModel.resetState",
            "LanguageModel.generate", "LanguageModel.maxContextLength", "GenerationConfig.init",
            "GenerationConfig.maxLength", "GenerationConfig.eosTokenId", "Tokenizer.encode",
            "Tokenizer.decode"} <= ios.uses()


def test_version_pins_are_the_contracts():
    assert check_android_pins(LIBS_TOML.read_text(), APP_GRADLE.read_text()) == []
    assert check_ios_pins(PROJECT_YML.read_text()) == []
    assert "from" not in project_packages(PROJECT_YML.read_text())["swift-transformers"]  # exact, not "up to major"


# --- the checker fails on each mistake it claims to catch (made in a copy of the real source) ----------
KOTLIN_MUTANTS = [  # in ChatEngine.kt: (old, new, expected problem)
    ("module.resetContext()", "module.resetContex()", "no method 'resetContex'"),
    ("collector, ECHO)", "collector, ECHO, 1)", "matches no overload"),  # an extra argument
    ("seqLen, collector, ECHO)", "collector, seqLen, ECHO)", "matches no overload"),  # swapped arguments
    ("collector, ECHO)", 'collector, "false")', "matches no overload"),  # a String for a Boolean
    ("tokenizerPath, TEMPERATURE)", "tokenizerPath, TEMPERATURE, 0)", "matches no overload"),  # Int for String
    ("llm.LlmModule\n", "llm.LlmModel\n", "is not in the ExecuTorch"),
    ("override fun onResult(", "override fun onResults(", "without onResult"),
    ("onError(errorCode: Int, message: String)", "onError(message: String)", "is not in LlmCallback"),
    ("                module.load()\n", "                val ok: Int = module.load()\n", "returns Unit"),
    ("val module = LlmModule(", "val module = LlmModul(", "unknown type LlmModul"),
    ("module.stop()\n    }\n\n    override", "module.stopped\n    }\n\n    override", "no property or constant"),
]
SWIFT_MUTANTS = [  # in Backends.swift: (old, new, expected problem)
    ("runner.reset()", "runner.rest()", "no method 'rest'"),
    ("tokenizerPath: bundle", "tokenizer: bundle", "matches no declaration"),  # a wrong label
    ("try runner.load()", "try runner.load(true)", "matches no declaration"),  # an extra argument
    ("$0.isEchoEnabled", "$0.echoEnabled", "no property 'echoEnabled'"),  # the ObjC name, not Swift's
    ("try runner.load()", "runner.load()", "called without try"),
    ("await model.resetState()", "model.resetState()", "called without await"),
    ("import ExecuTorchLLM", "import ExecuTorchLlm", "import ExecuTorchLlm"),
    ("temperature: Float(AppSettings.temperature)", "temperature: AppSettings.temperature", "matches no declaration"),
    ("$0.temperature = AppSettings.temperature", "$0.temperature = AppSettings.echo", "assigned AppSettings.echo"),
    ("model.maxContextLength", "model.maxContextLen", "no property 'maxContextLen'"),
    ("AutoTokenizer.from(modelFolder: bundle)", "AutoTokenizer.from(folder: bundle)", "matches no declaration"),
    ("runner = TextRunner(", "runner = TextRuner(", "unknown type TextRuner"),
    ("config.maxLength = ", "model.maxContextLength = ", "read-only"),
]
PIN_MUTANTS = [  # (file, old, new, expected problem)
    ("project.yml", "branch: swiftpm-1.5.0", "branch: swiftpm-1.4.1", "the contract is branch: swiftpm-1.5.0"),
    ("project.yml", "exactVersion: 1.3.3", "from: 1.3.3", "the contract is exactVersion: 1.3.3"),
    ("project.yml", "product: kernels_quantized", "product: kernels_quantised", "which it does not have"),
    ("libs.versions.toml", 'executorch = "1.5.1"', 'executorch = "1.5.0"', "org.pytorch:executorch-android:1.5.1"),
    ("libs.versions.toml", "[libraries]\n", '[libraries]\nfbjni = { group = "com.facebook.fbjni", name = "fbjni", '
     'version = "0.5.1" }\n', "pins fbjni"),
]


def _mutate(source: str, old: str, new: str) -> str:
    assert old in source, f"the mutation target {old!r} is gone from the source: update the mutant"
    return source.replace(old, new, 1)


@pytest.mark.parametrize("old,new,expected", KOTLIN_MUTANTS, ids=[m[1][:40] for m in KOTLIN_MUTANTS])
def test_checker_catches_kotlin_mistakes(old, new, expected):
    files = kotlin_sources()
    problems = check_kotlin({**files, "ChatEngine.kt": _mutate(files["ChatEngine.kt"], old, new)}).problems
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("old,new,expected", SWIFT_MUTANTS, ids=[m[1][:40] for m in SWIFT_MUTANTS])
def test_checker_catches_swift_mistakes(old, new, expected):
    files = swift_sources()
    mutant = {**files, "Backends.swift": _mutate(files["Backends.swift"], old, new)}
    problems = check_swift(mutant, PROJECT_YML.read_text()).problems
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("name,old,new,expected", PIN_MUTANTS, ids=[m[2][:40] for m in PIN_MUTANTS])
def test_checker_catches_pin_mistakes(name, old, new, expected):
    if name == "project.yml":
        problems = check_ios_pins(_mutate(PROJECT_YML.read_text(), old, new))
    else:
        problems = check_android_pins(_mutate(LIBS_TOML.read_text(), old, new), APP_GRADLE.read_text())
    assert any(expected in p for p in problems), problems


# --- the settings and the review fixes, read out of the sources ----------------------------------------
# Source-level only (nothing runs Kotlin or Swift here): they pin the named constants smolship's runtime test
# reads, and the shapes of the fixes, so a regression of any of them fails.
def _tree(language: str, source: str):
    return parser_for(language).parse(source.encode()).root_node


def function_source(language: str, source: str, name: str) -> str:
    ident = "identifier" if language == "kotlin" else "simple_identifier"
    for node in walk(_tree(language, source)):
        if node.type == "function_declaration" and text(named(node, ident)[0]) == name:
            return text(node)
    raise AssertionError(f"no function {name} in the {language} source")


def _squashed(language: str, path: Path, function: str) -> str:
    """A function's source on one line (whitespace runs as one space), for shape checks."""
    return re.sub(r"\s+", " ", function_source(language, path.read_text(), function))


def kotlin_constants(source: str) -> dict[str, str]:
    """`const val NAME = literal` -> the literal's text."""
    return {text(named(named(n, "variable_declaration")[0], "identifier")[0]): text(named(n)[-1])
            for n in walk(_tree("kotlin", source))
            if n.type == "property_declaration" and any("const" in text(m) for m in named(n, "modifiers"))}


def swift_statics(source: str, enum: str) -> dict[str, str]:
    """`static let name = literal` inside `enum <enum>` -> the literal's text."""
    for node in walk(_tree("swift", source)):
        if node.type == "class_declaration" and text(named(node, "type_identifier")[0]) == enum:
            return {text(d.child_by_field_name("name")): text(d.child_by_field_name("value"))
                    for d in walk(node) if d.type == "property_declaration"}
    raise AssertionError(f"no enum {enum}")


def free_identifiers(language: str, function: str) -> set[str]:
    """Names a function reads without declaring them (members after a dot and type names excluded)."""
    ident = "identifier" if language == "kotlin" else "simple_identifier"
    declared, used = set(), set()
    for node in walk(_tree(language, function)):
        if node.type in ("parameter", "variable_declaration", "pattern", "property_declaration", "for_statement"):
            declared |= {text(n) for n in named(node, ident)}  # a Swift parameter: its label and its name
        if node.type == ident:
            parent = node.parent
            member = parent.type in ("navigation_expression", "navigation_suffix") and parent.children[0] != node
            if not member and parent.type not in ("value_argument_label", "function_declaration", "user_type"):
                used.add(text(node))
    return used - declared


def test_android_settings_are_named_constants_the_runner_gets(android):
    from smolship.targets import ExportOptions

    consts = kotlin_constants((KOTLIN_DIR / "ChatEngine.kt").read_text())
    assert consts["TEMPERATURE"] == "0.0f"  # greedy, as the tests and the iOS app decode
    assert consts["ECHO"] == "false"  # else the runner hands the prompt back first, shown as the reply
    assert 0 < int(consts["MAX_NEW_TOKENS"]) < ExportOptions().max_seq_len
    (ctor,) = android.find("LlmModule", "<init>")
    assert ctor.bound["temperature"] == "TEMPERATURE"
    (gen,) = android.find("LlmModule", "generate")
    assert gen.bound == {"prompt": "prompt", "seqLen": "seqLen", "llmCallback": "collector", "echo": "ECHO"}


def test_android_trims_history_to_the_context_and_never_returns_an_empty_reply():
    reply = _squashed("kotlin", KOTLIN_DIR / "ChatEngine.kt", "reply")
    assert "val budget = format.maxSeqLen - MAX_NEW_TOKENS" in reply
    assert ("val fitted = fitHistory(history, budget) { utf8TokenBound(format.render(it)) } "
            "?: throw ChatException(") in reply
    assert "val prompt = format.render(fitted)" in reply  # the trimmed history, never the whole one
    assert "val seqLen = minOf(format.maxSeqLen, utf8TokenBound(prompt) + MAX_NEW_TOKENS)" in reply
    assert re.search(r"catch \(e: Exception\) \{ throw ChatException\(", reply)  # generate() throws on errors
    assert re.search(r"if \(collector\.text\.isEmpty\(\) && !collector\.stopped\) \{ throw ChatException\(", reply)
    on_result = _squashed("kotlin", KOTLIN_DIR / "ChatEngine.kt", "onResult")
    assert "if (pieces >= MAX_NEW_TOKENS) module.stop()" in on_result  # the reply stays inside the KV cache
    assert 'json.getInt("max_seq_len")' in (KOTLIN_DIR / "ChatFormat.kt").read_text()


def test_history_fitting_is_a_pure_function_of_messages_budget_and_count():
    kotlin = function_source("kotlin", (KOTLIN_DIR / "History.kt").read_text(), "fitHistory")
    assert re.search(r"fun fitHistory\(\s*messages: List<ChatMessage>,\s*budget: Int,\s*"
                     r"count: \(List<ChatMessage>\) -> Int,?\s*\): List<ChatMessage>\?", kotlin)
    assert free_identifiers("kotlin", kotlin) <= {"emptyList", "null", "continue"}  # keywords in Kotlin's grammar
    swift = function_source("swift", (SWIFT_DIR / "History.swift").read_text(), "fitHistory")
    assert ("func fitHistory(_ messages: [ChatMessage], budget: Int, count: ([ChatMessage]) -> Int) "
            "-> [ChatMessage]?") in swift
    assert free_identifiers("swift", swift) == set()


def test_android_failed_load_keeps_no_engine():
    activity = (KOTLIN_DIR / "MainActivity.kt").read_text()
    assignments = []  # (value, the types of the nodes around it)
    for node in walk(_tree("kotlin", activity)):
        if node.type == "assignment" and text(named(node)[0]) == "engine":
            around, parent = set(), node.parent
            while parent is not None:
                around.add(parent.type)
                parent = parent.parent
            assignments.append((text(named(node)[-1]), around))
    opened = "ChatEngine.open(File(ChatEngine.BUNDLE_DIR))"
    assert {value for value, _ in assignments} == {opened, "null"}
    (around,) = [a for value, a in assignments if value == opened]
    assert "try_expression" in around and "catch_block" not in around
    open_ = _squashed("kotlin", KOTLIN_DIR / "ChatEngine.kt", "open")
    assert "try { module.load() } catch (e: Exception) { module.close() throw e }" in open_
    assert "enabled = ready && input.isNotBlank()" in activity  # no Send without an engine


def test_ios_settings_are_named_and_set_echo_off_and_greedy_decoding(ios):
    settings = swift_statics((SWIFT_DIR / "AppSettings.swift").read_text(), "AppSettings")
    assert settings["echo"] == "false" and settings["doSample"] == "false"
    assert float(settings["temperature"]) == 0.0 and int(settings["maxNewTokens"]) > 0
    config = {r.member: r.bound["="] for r in ios.resolved if r.type == "Config" and "=" in r.bound}
    assert config == {"isEchoEnabled": "AppSettings.echo", "temperature": "AppSettings.temperature",
                      "maximumNewTokens": "AppSettings.maxNewTokens", "sequenceLength": "context"}
    (gen,) = ios.find("GenerationConfig", "init")
    assert gen.bound == {"maxNewTokens": "AppSettings.maxNewTokens", "doSample": "AppSettings.doSample",
                         "temperature": "Float(AppSettings.temperature)"}


def _backend_replies() -> tuple[str, str]:
    """The Core ML and the ExecuTorch backend's reply(to:onText:), each on one line."""
    core_ml, executorch = (SWIFT_DIR / "Backends.swift").read_text().split("final class ExecuTorchBackend")
    return tuple(re.sub(r"\s+", " ", function_source("swift", part, "reply")) for part in (core_ml, executorch))


def test_ios_max_length_is_clamped_to_the_models_context(ios):
    (max_length,) = ios.find("GenerationConfig", "maxLength")
    assert max_length.bound["="] == "generationLength(promptTokens: prompt.count, context: context)"
    assert "let context = model.maxContextLength" in _backend_replies()[0]
    clamp = _squashed("swift", SWIFT_DIR / "History.swift", "generationLength")
    assert "min(promptTokens + AppSettings.maxNewTokens, context)" in clamp


def test_ios_backends_trim_history_and_report_errors():
    core_ml, executorch = _backend_replies()
    for reply in (core_ml, executorch):
        assert ("guard let fitted = fitHistory(history, budget: context - AppSettings.maxNewTokens, count: count) "
                "else { throw ChatError.tooLong(context: context) }") in reply
    assert "let prompt = encode(fitted)" in core_ml
    assert "try runner.generate(format.render(fitted), Config {" in executorch
    assert "let context = format.maxSeqLen" in executorch
    assert "utf8TokenBound(self.format.render(messages))" in executorch
    assert "if reply.isEmpty && !stopped { throw ChatError.noText }" in executorch
    assert 'case maxSeqLen = "max_seq_len"' in (SWIFT_DIR / "ChatFormat.swift").read_text()


def test_ios_streamed_text_cannot_land_after_the_final_text():
    show = _squashed("swift", SWIFT_DIR / "SmolshipChatApp.swift", "show")
    finish = _squashed("swift", SWIFT_DIR / "SmolshipChatApp.swift", "finish")
    assert "guard streaming == turn" in show and "soFar.count > messages[i].content.count" in show
    assert finish.index("streaming = nil") < finish.index("messages[i] = message")  # replaces, then ignores late ones
    assert "+=" not in (SWIFT_DIR / "SmolshipChatApp.swift").read_text()  # updates carry the whole text so far
    assert "onText(reply)" in _backend_replies()[1]


def test_ios_failed_load_keeps_no_backend():
    load = _squashed("swift", SWIFT_DIR / "SmolshipChatApp.swift", "load")
    assert load.index("backend = nil") < load.index("Task {") < load.index("backend = loaded")
    assert load.index("loaded = try ExecuTorchBackend(bundle: url)") < load.index("backend = loaded")
