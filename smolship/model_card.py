"""README.md inside every bundle: what the bundle is, what was measured, and how each app loads it.

Generated from the manifest (source, recipe, sizes, validation) and the chat format, so every figure
in the card is the manifest's. The per-app steps name the files this bundle holds and the places
the official apps read them from (read from their sources: ExecuTorch's LlamaDemo and etLLM,
onnxruntime-genai's phi-3 samples, swift-transformers / swift-chat, llama.cpp's apps);
tests/test_apps.py checks every file name a card mentions against the bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

from smolship.chat_format import FILE as CHAT_FORMAT_FILE
from smolship.chat_format import ChatFormat
from smolship.validation.latency import UNRELIABLE, unreliable

CARD = "README.md"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
QUESTION = "What is the capital of France?"


def _q(s: str) -> str:
    """A string as JSON, so newlines and special tokens are visible and copyable."""
    return json.dumps(s, ensure_ascii=False)


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _summary(m: dict) -> list[str]:
    src, q, v = m["source"], m["quant"], m.get("validation") or {}
    ref = src.get("ref") or src.get("path") or src.get("name")
    rows = [
        ("model", f"{src.get('name')} ({src.get('kind')}: `{ref}`)"),
        ("target / recipe", f"{m['target']} / {q['recipe']}: {q['description']} ({q['precision']})"),
        ("model files", ", ".join(f"`{f}`" for f in m.get("model_files", [])) + f" ({m.get('size_mb')} MB)"),
        ("context", f"{m['max_seq_len']} tokens"),
        ("exported", f"{m['created']} by smolship {m['smolship_version']} ({m.get('export_seconds', 'n/a')} s)"),
        ("runtimes", ", ".join(f"{k} {val}" for k, val in m.get("runtime_versions", {}).items())),
    ]
    lines = ["| | |", "|---|---|", *(f"| {k} | {val} |" for k, val in rows)]
    lines += ["", "## Measured", ""]
    if not v:
        lines.append("Not validated: this bundle was exported without validation (`smolship validate` measures it).")
        return lines
    host = m.get("host", {})
    how = ("in its own runtime" if v.get("runtime_ran") else
           f"without its runtime ({v.get('runtime_note')}); figures come from weight_parity")
    lines.append(f"Against the PyTorch reference, {how}, on {host.get('system')} {host.get('machine')} "
                 f"(Python {host.get('python')}):")
    lines += ["", "| metric | value |", "|---|---|"]
    for key in ("kld_mean", "top1_agreement", "max_abs_logit_diff", "greedy_match", "eval_tokens",
                "prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb", "threads"):
        if key in v:
            lines.append(f"| {key} | {_fmt(v[key])}{' ' + UNRELIABLE if unreliable(v, key) else ''} |")
    lines += _long_context(v)
    if "decode_tok_s" not in v:
        lines.append("| speed | not measured at export |")
    if v.get("latency_note"):
        lines += ["", f"Latency note: {'speeds marked ' + UNRELIABLE + ' were measured under load: ' if unreliable(v) else ''}"
                      f"{v['latency_note']}"]
    return lines + _platforms(v.get("platforms") or [])


def _long_context(v: dict) -> list[str]:
    """Rows of the Measured table for a full context (issue 29): parity early / late, peak RSS with the cache full."""
    lc, rows = v.get("long_context") or {}, []
    if "kld_mean_late" in lc:
        e, l = lc["early_positions"], lc["late_positions"]
        rows += [f"| long context: kld_mean early (positions {e[0]}-{e[1] - 1}) / late ({l[0]}-{l[1] - 1}) "
                 f"| {_fmt(lc['kld_mean_early'])} / {_fmt(lc['kld_mean_late'])} |",
                 f"| long context: top1 early / late | {_fmt(lc['top1_early'])} / {_fmt(lc['top1_late'])} |"]
    if lc.get("note"):
        rows.append(f"| long context | {lc['note']} |")
    if v.get("full_context_peak_rss_mb") is not None:
        rows.append(f"| peak_rss_mb with the cache full ({v.get('full_context_positions')} positions) "
                    f"| {_fmt(v['full_context_peak_rss_mb'])} |")
    return rows


def _platforms(rows: list[dict]) -> list[str]:
    """Where else the bundle was run: the runtime versions the apps pin, arm64 kernels under emulation."""
    if not rows:
        return []
    n = next((r["eval_tokens"] for r in rows if "eval_tokens" in r), "?")
    lines = ["", "## Proven in", "",
             f"The same bundle run in each runtime build below, over the eval set's first {n} tokens (kld against the "
             "PyTorch reference; `vs native`: against this machine's build of the exporter's runtime). Emulated runs "
             "give logits, never speeds.", "",
             "| runtime | arch | cpu features | kld_mean | top1 | vs native kld | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['platform']} | | | not run | | | {r['error']} |")
            continue
        versions = ", ".join(f"{k} {val}" for k, val in r.get("versions", {}).items())
        where = "" if r["platform"] in versions else f" ({r['platform']})"  # an emulated CPU, or "native"
        vs = _fmt(r["vs_native"]["kld_mean"]) if "vs_native" in r else "-"
        note = ("**finding: arm64-only divergence** " if r.get("finding") else "") + (r.get("note") or "")
        lines.append(f"| {versions}{where} | {r['arch']} | {' '.join(r.get('cpu_features') or []) or '-'} "
                     f"| {_fmt(r['kld_mean'])} | {_fmt(r['top1_agreement'])} | {vs} | {note} |")
    return lines


def _prompt(fmt: ChatFormat | None, why: str | None) -> list[str]:
    lines = ["## Prompt format", ""]
    if fmt is None:
        return [*lines, f"No chat format: {why}. Send plain text."]
    example = fmt.render([{"role": "user", "content": QUESTION}])
    lines += [f"`{CHAT_FORMAT_FILE}` holds these strings (derived from the chat template and checked against it "
              f"on {fmt.verified_conversations} conversations). An app builds the prompt by concatenation:", "",
              "| role | prefix | suffix |", "|---|---|---|"]
    lines += [f"| {r} | `{_q(t.prefix)}` | `{_q(t.suffix)}` |" for r, t in fmt.roles.items()]
    lines += ["", f"- generation prompt (appended last): `{_q(fmt.generation_prompt)}`",
              f"- default system message (when the conversation has none): "
              f"{'none' if fmt.default_system is None else '`' + _q(fmt.default_system) + '`'}",
              f"- stop strings: {', '.join(f'`{s}`' for s in fmt.stop_strings)}; stop ids: {fmt.stop_ids}",
              f"- the tokenizer adds BOS itself: {'yes' if fmt.add_bos_token else 'no'}", "",
              f"The question {_q(QUESTION)} becomes:", "", "```", example, "```"]
    return lines


def app_entries(manifest: dict) -> list[str]:
    """What an app needs from this bundle (model files or folders, tokenizer, chat format), in copy order."""
    extra = {
        "executorch": ["tokenizer.json", CHAT_FORMAT_FILE],
        "onnx": ["genai_config.json", *TOKENIZER_FILES],  # what og.Model(folder) reads
        "coreml": ["config.json", *TOKENIZER_FILES, CHAT_FORMAT_FILE],  # AutoTokenizer.from(modelFolder:)
        "gguf": [],
    }.get(manifest["target"], [])
    return list(dict.fromkeys([*manifest.get("model_files", []), *extra]))


def app_files(manifest: dict) -> list[str]:
    """`app_entries` with folders expanded to the files under them (paths relative to the bundle)."""
    listed = manifest.get("files", {})
    return [rel for e in app_entries(manifest) for rel in ([e] if e in listed else sorted(
        r for r in listed if r.startswith(e + "/")))]


def renamed_pte(app: str, recipe: str) -> str:
    """The .pte name an official ExecuTorch app needs to pick ChatML: 'qwen' (LlamaDemo), 'smollm3' (etLLM)."""
    return f"{app}-smolship-{recipe}.pte"


def _executorch(m: dict, fmt: ChatFormat | None) -> list[str]:
    stop = fmt.turn_end if fmt else "<|im_end|>"
    pte = m["model_files"][0]
    return [
        "### Android: ExecuTorch LlamaDemo (meta-pytorch/executorch-examples `llm/android/LlamaDemo`)", "",
        "The app lists `.pte` and tokenizer files in `/data/local/tmp/llama/` and picks its prompt template from the",
        "`.pte` file name; it has no SmolLM entry, and a name containing `qwen` selects its ChatML template, which is",
        f"this model's format, and its stop string `{stop}`. So rename on push:", "",
        "```sh", "adb shell mkdir -p /data/local/tmp/llama",
        f"adb push {pte} /data/local/tmp/llama/{renamed_pte('qwen', m['quant']['recipe'])}",
        "adb push tokenizer.json /data/local/tmp/llama/", "```", "",
        "In the app's settings set the system prompt to the default system message above.", "",
        "### iOS: ExecuTorch etLLM (`llm/apple`)", "",
        "etLLM picks the template from the file name too: a name containing `smollm3` selects ChatML (with the",
        f"system message `/no_think`) and stops on `{stop}`. Copy `{pte}` renamed to",
        f"`{renamed_pte('smollm3', m['quant']['recipe'])}` and `tokenizer.json` into Files > On My iPhone > etLLM.", "",
        "### This repository's examples", "",
        f"`examples/android` (Kotlin, `LlmModule`) and `examples/ios` (SwiftUI, `TextRunner`) read `{pte}`,",
        f"`tokenizer.json` and `{CHAT_FORMAT_FILE}` unchanged; see their READMEs.", "",
        "The runner reads the stop ids from the program (`get_eos_ids`), so it ends the reply itself.",
    ]


def _onnx(m: dict, fmt: ChatFormat | None) -> list[str]:
    files, entries = app_files(m), app_entries(m)
    return [
        "### onnxruntime-genai (microsoft/onnxruntime-inference-examples `mobile/examples/phi-3`)", "",
        f"Copy {', '.join(f'`{f}`' for f in files)}: `og.Model(folder)` reads `genai_config.json`, which names the",
        "model file, and the tokenizer files (`config.json` is for transformers.js and does no harm).",
        "The phone samples hard-code Phi-3's file list and prompt, so edit both:", "",
        f"- Android (`MainActivity.java`): set `MODEL_FILES` to {', '.join(_q(f) for f in files)} and put them in",
        "  the app's files folder, keeping sub-folders (debug build):", "",
        "```sh", "adb shell mkdir -p /data/local/tmp/smolship",
        f"adb push {' '.join(entries)} /data/local/tmp/smolship/",
        "adb shell run-as ai.onnxruntime.genai.demo sh -c 'cp -r /data/local/tmp/smolship/* files/'", "```", "",
        "- iOS (`LocalLLM`): add the same files, as a folder reference so sub-folders stay, to the app target's",
        "  Copy Bundle Resources (the sample loads the app bundle's resource folder).",
        "- In both, replace the Phi-3 prompt string with the format above; genai stops at the `eos_token_id`s",
        "  of `genai_config.json` (the stop ids above).",
        "",
        "onnxruntime-genai has no Android package on Maven Central: the sample vendors an `.aar` from its releases.",
        "",
        "### transformers.js (browser, Node)", "",
        "Serve this folder as is; `config.json` names the dtype, so `AutoModelForCausalLM.from_pretrained(folder)`",
        "picks the model file. In a browser pass",
        "`session_options: { extra: { session: { disable_quant_qdq: \"1\" } } }`: the quantized weights are",
        "`DequantizeLinear -> MatMul` pairs, which onnxruntime-web then folds into fp32 once at load (its int4/int8",
        "matmul kernels are 10-20x slower in WASM); native ONNX Runtime (Node, genai) fuses them by itself.",
        "`examples/web` in the smolship repository is a complete page.",
    ]


def _coreml(m: dict, fmt: ChatFormat | None) -> list[str]:
    name = (m.get("target_info") or {}).get("metadata", {}).get("co.huggingface.exporters.name", "n/a")
    return [
        "### swift-transformers (`LanguageModel`) and this repository's `examples/ios`", "",
        "`model.mlpackage` follows swift-transformers' stateful convention (`inputIds`, `causalMask` -> `logits`,",
        "states `keyCache` / `valueCache`). Load the tokenizer from this folder, not from the hub:",
        "`AutoTokenizer.from(modelFolder:)` reads `config.json`, `tokenizer.json` and `tokenizer_config.json` (chat",
        "template included), then `LanguageModel.loadCompiled(url:computeUnits:tokenizer:)` on the compiled model",
        "(`MLModel.compileModel(at:)` of `model.mlpackage`). In Xcode add the bundle folder as a folder reference.", "",
        "swift-transformers stops only at one id (`GenerationConfig.eosTokenId`): set it to the first stop id above.", "",
        "### swift-chat (huggingface/swift-chat, macOS)", "",
        "Open `model.mlpackage` in the app. It has no local tokenizer option: it downloads config and tokenizer",
        f"from the hub repository named by the package metadata `co.huggingface.exporters.name` = `{name}`.",
        "It sends the text as typed (no chat template): type the formatted prompt above.", "",
        "Core ML needs iOS 18 / macOS 15 (stateful model).",
    ]


def _gguf(m: dict, fmt: ChatFormat | None) -> list[str]:
    gguf = m["model_files"][0]
    return [
        "### llama.cpp apps (`examples/llama.android`, `examples/llama.swiftui`) and any llama.cpp client", "",
        f"Copy the single file `{gguf}` to the device and open it in the app; its metadata carries the chat template",
        "(`tokenizer.chat_template`) and the end-of-sequence id (`tokenizer.ggml.eos_token_id`), which llama.cpp",
        "applies itself.", "", f"```sh\nadb push {gguf} /sdcard/Download/\n```",
    ]


APPS = {"executorch": _executorch, "onnx": _onnx, "coreml": _coreml, "gguf": _gguf}


def render(manifest: dict, fmt: ChatFormat | None, why: str | None = None) -> str:
    title = f"# {manifest['source'].get('name')}: {manifest['target']} {manifest['quant']['recipe']}"
    lines = [title, "", "Generated by smolship at export; every figure below is from this bundle's `manifest.json`.", ""]
    lines += _summary(manifest) + [""] + _prompt(fmt, why) + ["", "## Load it in an app", ""]
    app = APPS.get(manifest["target"])
    lines += app(manifest, fmt) if app else ["No app instructions for this target."]
    lines += ["", "Phone builds were not run by smolship: the steps above follow each app's source; the runtimes they",
              "wrap (ExecuTorch's runner, onnxruntime-genai, the Core ML spec checks) are exercised in smolship's tests."]
    return "\n".join(lines) + "\n"


def write(folder: Path, manifest: dict, fmt: ChatFormat | None) -> str:
    why = (manifest.get("chat_format") or {}).get("unavailable")
    (Path(folder) / CARD).write_text(render(manifest, fmt, why))
    return CARD
