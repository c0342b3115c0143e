"""Faults a user meets: a killed export, two exports of one bundle at once, a bundle changed after export,
numbers out of range, a machine too small, and latency measured on a busy machine (issue 17)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from smolship.bundle import OWNER, atomic_bundle, stale_partials
from smolship.errors import SmolshipError
from smolship.exporter.config import PRESETS
from smolship.preflight import check_export, check_max_seq_len, check_memory, export_memory_bytes

PY = sys.executable


def smolship(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", "from smolship.cli.app import main; main()", *args],
                          capture_output=True, text=True, timeout=600, env=env)


def clean_error(proc, *needles) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Fix:" in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from smolship.bundle import atomic_bundle
    final, hold = Path(sys.argv[1]), Path(sys.argv[2])
    with atomic_bundle(final) as tmp:
        (tmp / "model.bin").write_bytes(b"A" * 1_000_000)
        print(tmp, flush=True)
        while hold.exists():   # an export at work: until the test lets it finish (or kills it)
            time.sleep(0.05)
        (tmp / "manifest.json").write_text("{}")
""")


def start_writer(final: Path, hold: Path) -> tuple[subprocess.Popen, Path]:
    hold.write_text("hold")
    proc = subprocess.Popen([PY, "-c", WRITER, str(final), str(hold)], stdout=subprocess.PIPE, text=True)
    partial = Path(proc.stdout.readline().strip())
    assert partial.is_dir() and (partial / OWNER).is_file()
    return proc, partial


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, tiny_model):
    from smolship.export import export_bundle
    from smolship.targets import ExportOptions, get_target

    out = tmp_path_factory.mktemp("faults")
    path, _ = export_bundle(tiny_model, "gguf", get_target("gguf").recipes["q8_0"], out, ExportOptions(max_seq_len=128))
    return path


# --- crash-safe output folders ---------------------------------------------------------------------
def test_killed_export_leaves_debris_that_the_next_export_removes(tmp_path):
    out = tmp_path / "out"
    writer, partial = start_writer(out / "gguf-q8_0", tmp_path / "hold")
    assert stale_partials(out) == ([], [])  # a live writer's folder is never touched
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert partial.is_dir() and stale_partials(out)[0] == [partial]
    proc = smolship("export", "random:tiny", "--target", "gguf", "--quant", "q8_0", "--no-validate",
                    "--max-seq-len", "128", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert not partial.exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert json.loads((out / "gguf-q8_0" / "manifest.json").read_text())["target"] == "gguf"


def test_partial_of_unknown_owner_is_listed_with_its_removal_command(tmp_path, caplog):
    from smolship.bundle import sweep_partials

    legacy = tmp_path / ".onnx-int8.partial-abc123"  # written by an older smolship: no owner record
    legacy.mkdir()
    sweep_partials(tmp_path)
    assert legacy.is_dir()
    assert f"rm -rf '{legacy}'" in caplog.text


def test_second_export_of_the_same_bundle_fails_clearly_and_corrupts_nothing(tmp_path):
    out, hold = tmp_path / "out", tmp_path / "hold"
    writer, partial = start_writer(out / "gguf-q8_0", hold)
    proc = smolship("export", "random:tiny", "--target", "gguf", "--quant", "q8_0", "--no-validate",
                    "--max-seq-len", "128", "--out", str(out), "--force")
    clean_error(proc, "Another smolship export is writing", f'"pid": {writer.pid}')
    assert partial.is_dir()  # the first writer's work is untouched
    hold.unlink()
    assert writer.wait(timeout=60) == 0
    final = out / "gguf-q8_0"
    assert (final / "model.bin").read_bytes() == b"A" * 1_000_000 and (final / "manifest.json").is_file()
    assert not (final / OWNER).exists()


def test_bundle_permissions_follow_the_umask(tmp_path):
    import tempfile

    old = os.umask(0o022)
    try:
        with atomic_bundle(tmp_path / "b") as tmp:
            (tmp / "f").write_text("x")
            private = Path(tempfile.mkdtemp(dir=tmp))  # as libraries write (coremltools: 0600 files)
            os.close(tempfile.mkstemp(dir=private)[0])
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "b", *(tmp_path / "b").rglob("*")]}
    assert modes == {k: (0o755 if (tmp_path / k).is_dir() else 0o644) for k in modes}, modes


# --- integrity before use --------------------------------------------------------------------------
@pytest.fixture
def corrupted(tiny_bundle, tmp_path):
    import shutil

    bad = tmp_path / tiny_bundle.name
    shutil.copytree(tiny_bundle, bad)
    model = next(p for p in bad.iterdir() if p.suffix == ".gguf")
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF  # one weight byte: loads fine, answers garbage
    model.write_bytes(bytes(data))
    return bad, model.name


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The real entry point (exit codes and error display included), in this process: no import cost."""
    from unittest import mock

    from smolship.cli.app import main

    capsys.readouterr()
    with mock.patch.object(sys, "argv", ["smolship", *args]):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("command", [["chat", "{b}", "-p", "hi", "--max-new-tokens", "2"], ["bench", "{b}", "--runs", "1"],
                                     ["validate", "{b}", "--no-latency", "--eval-tokens", "64"]])
def test_changed_bundle_is_refused_by_every_loading_command(corrupted, command, capsys):
    bad, name = corrupted
    code, _, err = run_main(capsys, *[a.replace("{b}", str(bad)) for a in command])
    assert code == 2 and "modified after export" in err and name in err and "--no-verify" in err, err


def test_inspect_verify_exit_codes(tiny_bundle, corrupted, tmp_path, capsys):
    code, out, _ = run_main(capsys, "inspect", str(tiny_bundle), "--verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _ = run_main(capsys, "inspect", str(corrupted[0]), "--verify")
    assert code == 1 and corrupted[1] in out
    code, _, err = run_main(capsys, "inspect", str(tmp_path), "--verify")
    assert code == 2 and "--verify needs a bundle folder" in err


def test_no_verify_says_it_skipped(corrupted, capsys):
    code, _, err = run_main(capsys, "chat", str(corrupted[0]), "-p", "hi", "--max-new-tokens", "2", "--no-verify")
    assert code == 0 and "Not verified" in err, err


# --- options checked up front ----------------------------------------------------------------------
def cli_error(*args: str) -> str:
    """Run the CLI in this process (the checks come before any heavy import); the SmolshipError's text."""
    from typer.testing import CliRunner

    from smolship.cli.app import app

    result = CliRunner().invoke(app, list(args))
    assert isinstance(result.exception, SmolshipError), (result.exception, result.output)
    return str(result.exception)


@pytest.mark.parametrize("args,needles", [
    (["--max-seq-len", "0"], ["--max-seq-len 0 is out of range", "at least 1"]),
    (["--max-seq-len", "100000000"], ["--max-seq-len 100000000", "512 positions", "GB"]),
    (["--eval-tokens", "-5"], ["--eval-tokens -5 is out of range"]),
    (["--threads", "0"], ["--threads 0 is out of range"]),
    (["--threads", "100000"], ["--threads 100000", f"this machine has {os.cpu_count()} cores"]),
    (["--jobs", "0"], ["--jobs 0 is out of range"]),
])
def test_export_options_out_of_range_fail_before_work(tmp_path, args, needles):
    out = tmp_path / "out"
    message = cli_error("export", "random:tiny", "--target", "gguf", "--out", str(out), *args)
    assert all(n in message for n in needles), message
    assert not out.exists()


@pytest.mark.parametrize("args,needle", [
    (["chat", "random:tiny", "-p", "x", "--top-p", "0"], "--top-p 0.0 is out of range"),
    (["chat", "random:tiny", "-p", "x", "--temperature", "-1"], "--temperature -1.0 is out of range"),
    (["bench", "--reference", "--runs", "0"], "--runs 0 is out of range"),
    (["validate", "nowhere", "--min-top1", "2"], "--min-top1 2.0 is out of range"),
])
def test_other_commands_check_their_numbers(args, needle):
    assert needle in cli_error(*args)


def test_out_of_range_is_a_clean_exit_2_from_the_real_command(tmp_path):
    clean_error(smolship("export", "random:tiny", "--target", "gguf", "--max-seq-len", "0", "--out", str(tmp_path / "o")),
                "--max-seq-len 0 is out of range")


def test_max_seq_len_default_follows_a_smaller_model():
    tiny = PRESETS["tiny"]
    assert check_max_seq_len(2048, tiny)[0] == tiny.max_position_embeddings
    assert check_max_seq_len(300, tiny) == (300, "")
    with pytest.raises(SmolshipError, match="between 1 and 512"):
        check_max_seq_len(513, tiny)


def test_memory_estimate_refuses_a_machine_too_small(monkeypatch):
    big = PRESETS["smollm2-1.7b"]
    need = export_memory_bytes(big, 2048, ["onnx"])
    assert 17.3e9 < need < 17.3e9 * 1.1  # ONNX int4 at 1.7B peaked at 17.3 GB (preflight docstring)
    with pytest.raises(SmolshipError, match=r"Not enough memory: .*1\.7\dB-parameter.* 8\.0 GB of memory is available"):
        check_memory(big, 2048, ["onnx"], available=8 * 10**9)
    assert check_memory(big, 2048, ["onnx"], available=64 * 10**9) == ""
    both = export_memory_bytes(big, 2048, ["onnx", "executorch"], parallel=2)
    assert abs(both - need - export_memory_bytes(big, 2048, ["executorch"])) <= 2  # int rounding
    assert export_memory_bytes(big, 10**8, ["coreml"]) > 10**12  # the 100M-position KV cache
    monkeypatch.setenv("SMOLSHIP_SKIP_MEMORY_CHECK", "1")
    assert "skipped" in check_memory(big, 2048, ["onnx"], available=8 * 10**9)


def test_export_preflight_reads_the_model_config_cheaply():
    seq, notes, jobs = check_export(None, ["gguf"], 4096, 0, None, 1, None, True)  # the real default model's header
    assert seq == 4096 and notes == [] and jobs == 1
    with pytest.raises(SmolshipError, match="8192 positions"):
        check_export(None, ["gguf"], 8193, 0, None, 1, None, True)


# --- honest latency --------------------------------------------------------------------------------
def test_latency_rule_flags_spread_and_load():
    from smolship.validation.latency import reliability

    quiet = reliability([1.00, 1.02, 1.01], [0.10, 0.10, 0.11], 0.05)
    assert quiet["latency_reliable"] and quiet["latency_note"] is None
    noisy = reliability([1.0, 1.3, 1.1], [0.10, 0.10, 0.10], 0.05)
    assert not noisy["latency_reliable"] and "decode runs differ by 27%" in noisy["latency_note"]
    loaded = reliability([1.0, 1.0, 1.0], [0.1, 0.1, 0.1], 0.6)
    assert not loaded["latency_reliable"] and "other processes used 60%" in loaded["latency_note"]


def test_machine_load_sees_another_busy_process():
    from smolship.validation.latency import MachineLoad

    busy = subprocess.Popen([PY, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        load = MachineLoad()
        load.start()
        time.sleep(1.0)
        others = load.stop()
    finally:
        busy.kill()
        busy.wait()
    assert others >= 0.9 / os.cpu_count() * 0.8, others  # one busy core of cpu_count


def test_report_marks_unreliable_latency():
    from smolship.validation.report import markdown

    row = {"bundle": "gguf-q8_0", "decode_tok_s": 60.0, "prefill_tok_s": 900.0, "ttft_ms": 30.0,
           "latency_reliable": False, "latency_note": "other processes used 55% of the CPU (limit 25%)"}
    md = markdown({"source": "x", "machine": {"system": "Linux", "machine": "x86_64", "threads": 2, "libraries": {}},
                   "rows": [row, {**row, "bundle": "onnx-int8", "latency_reliable": True, "latency_note": None}]})
    assert md.count("(unreliable)") == 3  # prefill, decode, ttft of the one loaded row
    assert "gguf-q8_0: latency unreliable: other processes used 55%" in md
