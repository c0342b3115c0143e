"""The example apps' generation settings, read out of their sources (not copied into the tests).

Android: the `const val`s of ChatEngine's companion and the arguments of its LlmModule calls.
iOS: `AppSettings` (AppSettings.swift) and the `Config { $0.x = ... }` block ExecuTorchBackend hands
TextRunner, mapped onto the C++ runner's GenerationConfig fields, which TextRunner's Config wraps.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANDROID_ENGINE = ROOT / "examples/android/app/src/main/java/org/smolship/chat/ChatEngine.kt"
IOS_SETTINGS = ROOT / "examples/ios/SmolshipChat/AppSettings.swift"
IOS_BACKENDS = ROOT / "examples/ios/SmolshipChat/Backends.swift"

# ExecuTorchLLM's Config (ExecuTorchLLMConfig.h, Swift names) -> executorch::extension::llm::GenerationConfig
IOS_CONFIG_FIELDS = {"isEchoEnabled": "echo", "temperature": "temperature", "maximumNewTokens": "max_new_tokens",
                     "sequenceLength": "seq_len"}


def _value(text: str):
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d*f?", text):
        return float(text.rstrip("f"))
    if re.fullmatch(r'"[^"]*"', text):
        return text[1:-1]
    raise ValueError(f"not a literal: {text!r}")


def kotlin_constants(path: Path = ANDROID_ENGINE) -> dict:
    """`const val NAME = literal` of the file."""
    return {m[1]: _value(m[2]) for m in re.finditer(r"const val (\w+)\s*=\s*(.+)", path.read_text())}


def swift_settings(path: Path = IOS_SETTINGS) -> dict:
    """`static let name = literal` of enum AppSettings."""
    return {m[1]: _value(m[2]) for m in re.finditer(r"static let (\w+)\s*=\s*(.+)", path.read_text())}


def ios_runner_config(context: int) -> dict:
    """The GenerationConfig ExecuTorchBackend builds: each `$0.field = AppSettings.x | context` line of its
    Config block, resolved. A field the app does not set is absent (the runner's default applies)."""
    settings = swift_settings()
    block = re.search(r"Config \{(.*?)\n\s*\}\)", IOS_BACKENDS.read_text(), re.S).group(1)
    config = {}
    for field, expr in re.findall(r"\$0\.(\w+)\s*=\s*([\w.]+)", block):
        if expr == "context":
            value = context
        elif expr.startswith("AppSettings."):
            value = settings[expr.removeprefix("AppSettings.")]
        else:
            raise ValueError(f"Backends.swift sets {field} from {expr!r}, which this reader does not resolve")
        config[IOS_CONFIG_FIELDS[field]] = value
    return config


def android_runner_config(prompt: str, context: int) -> dict:
    """What ChatEngine hands LlmModule: temperature at construction, `generate(prompt, seqLen, callback, ECHO)`
    with seqLen = minOf(context, utf8TokenBound(prompt) + MAX_NEW_TOKENS) (the UTF-8 byte count bounds a
    byte-level BPE's tokens); it stops the runner itself after MAX_NEW_TOKENS pieces. Each of these is checked
    against ChatEngine.kt's text."""
    source = ANDROID_ENGINE.read_text()
    c = kotlin_constants()
    assert re.search(r"LlmModule\(\s*[^,]+,\s*[^,]+,\s*TEMPERATURE,?\s*\)", source), "LlmModule(model, tokenizer, TEMPERATURE)"
    assert "if (pieces >= MAX_NEW_TOKENS) module.stop()" in source
    assert "module.generate(prompt, seqLen, collector, ECHO)" in source
    assert "val seqLen = minOf(format.maxSeqLen, utf8TokenBound(prompt) + MAX_NEW_TOKENS)" in source
    # the app also stops the runner after MAX_NEW_TOKENS pieces (its callback): the runner's max_new_tokens
    return {"temperature": c["TEMPERATURE"], "echo": c["ECHO"], "max_new_tokens": c["MAX_NEW_TOKENS"],
            "seq_len": min(context, len(prompt.encode()) + c["MAX_NEW_TOKENS"])}
