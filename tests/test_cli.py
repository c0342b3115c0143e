"""The CLI end to end in a subprocess: clear errors (exit 2, no traceback, nothing written) and the chat."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def smolship(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from smolship.cli.app import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=900)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Error:" in proc.stderr and "Fix:" in proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


@pytest.mark.parametrize("args,needles", [
    (["export", "/nope/model.gguf", "--target", "gguf", "--out", "{out}"], ["does not exist"]),
    (["export", "random:tiny", "--target", "tpu", "--out", "{out}"], ["Unknown target 'tpu'"]),
    (["export", "random:tiny", "--target", "gguf", "--quant", "q3_z", "--out", "{out}"], ["no recipe 'q3_z'"]),
    (["export", "random:nope", "--target", "gguf", "--out", "{out}"], ["Unknown random preset"]),
    (["export", "random:tiny", "--target", "onnx", "--set", "onnx.group_sise=64", "--out", "{out}"],
     ["Unknown onnx option(s): group_sise", "Valid onnx options: accuracy_level"]),
    (["export", "random:tiny", "--target", "onnx", "--set", "onnx.lm_head_bits=eight", "--out", "{out}"],
     ["lm_head_bits='eight' has the wrong type (expected int)"]),
    (["export", "random:tiny", "--target", "onnx", "--set", "gguf.imatrix=false", "--out", "{out}"],
     ["for the gguf target, which this export does not run"]),
    (["export", "random:tiny", "--target", "onnx", "--set", "lm_head_bits=4", "--out", "{out}"],
     ["is not TARGET.OPTION=VALUE"]),
    (["export", "random:tiny", "--target", "gguf", "--jobs", "many", "--out", "{out}"],
     ["--jobs 'many' is neither a number nor 'auto'"]),
])
def test_bad_export_input_is_a_clear_error_and_writes_nothing(tmp_path, args, needles):
    out = tmp_path / "out"
    proc = smolship(*[a.replace("{out}", str(out)) for a in args])
    assert_clean_error(proc, *needles)
    assert not out.exists()


def test_a_misspelt_option_is_a_usage_error(tmp_path):
    """typer >= 0.20 raises its vendored click's errors, which click.ClickException does not catch: this once
    printed "Unexpected error ... report it" for a typo."""
    out = tmp_path / "out"
    proc = smolship("export", "random:tiny", "--target", "onnx", "--no-latency", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "No such option" in proc.stderr and "--no-latency" in proc.stderr, proc.stderr
    assert "Unexpected error" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_target_options_reach_the_export_and_its_manifest(tmp_path):
    """--set TARGET.OPTION=VALUE (JSON values) is what ExportOptions.extra gets: the int4 head drops to 4 bits
    and no layer keeps 8 bits, as the quantizer's own report in the manifest says."""
    out = tmp_path / "out"
    listing = smolship("export", "--options")
    assert listing.returncode == 0 and "onnx.lm_head_bits" in listing.stdout and "gguf.imatrix" in listing.stdout
    proc = smolship("export", "random:tiny", "--target", "onnx", "--quant", "int4", "--no-validate", "--out", str(out),
                    "--set", "onnx.lm_head_bits=4", "--set", "onnx.int4_eight_bit=[]")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "onnx-int4" / "manifest.json").read_text())
    assert manifest["quant"]["options"] == {"lm_head_bits": 4, "int4_eight_bit": []}
    quant = manifest["target_info"]["quant"]
    assert quant["embedding"].startswith("int4") and not any(k.startswith("int8") for k in quant["matmul_weights"])


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 64)
    out = tmp_path / "out"
    assert_clean_error(smolship("export", str(bad), "--target", "gguf", "--out", str(out)), "not a readable GGUF")
    assert not out.exists()


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_clean_error(smolship("export", "random:tiny", "--target", "gguf", "--out", str(blocker / "out")),
                       "cannot be written")


def test_existing_bundle_without_force(tmp_path):
    existing = tmp_path / "out" / "gguf-q8_0"
    existing.mkdir(parents=True)
    (existing / "model.gguf").write_text("precious")
    proc = smolship("export", "random:tiny", "--target", "gguf", "--quant", "q8_0", "--out", str(tmp_path / "out"))
    assert_clean_error(proc, "already exists", "--force")
    assert (existing / "model.gguf").read_text() == "precious"


def test_inspect_model_json():
    proc = smolship("inspect", "random:tiny", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["config"]["num_layers"] == 2 and info["tokenizer"]["stop_tokens"] == ["<|im_end|>"]


def test_validate_rejects_a_non_bundle(tmp_path):
    assert_clean_error(smolship("validate", str(tmp_path)), "not a smolship bundle")


@pytest.mark.slow
def test_chat_answers_paris():
    proc = smolship("chat", "--prompt", "What is the capital of France?", "--max-new-tokens", "32")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
