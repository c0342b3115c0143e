"""Fuzzing in CI: every seed and past crash replayed through its reader, then each reader fuzzed by atheris
for a bounded time (5 s each, plus imports). Longer runs: see run.py's docstring."""

from __future__ import annotations

import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from harnesses import HARNESSES

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
SECONDS = 5  # per reader; each worker also spends a few seconds importing torch


@pytest.mark.parametrize("reader", sorted(HARNESSES))
def test_corpus_replays_with_only_smolship_errors(reader):
    seeds = sorted((CORPUS / reader).iterdir())
    assert len(seeds) >= 2, f"corpus/{reader} needs seeds"
    for seed in seeds:
        HARNESSES[reader](seed.read_bytes())  # anything but SmolshipError fails the test


@pytest.mark.parametrize("reader,seed", [("gguf", "huge-tensor-claim.gguf"),
                                         ("safetensors", "huge-shape-claim.safetensors"),
                                         ("safetensors", "huge-offsets-claim.safetensors")])
def test_huge_tensor_claim_fails_before_allocating(reader, seed, tmp_path):
    from smolship.errors import SmolshipError
    from smolship.exporter.gguf_source import load_gguf
    from smolship.exporter.hf_weights import read_weights

    path = tmp_path / ("model.gguf" if reader == "gguf" else "model.safetensors")
    path.write_bytes((CORPUS / reader / seed).read_bytes())
    tracemalloc.start()  # numpy's buffers are traced too
    with pytest.raises(SmolshipError, match="claims|not a readable GGUF"):
        load_gguf(path) if reader == "gguf" else read_weights(tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB allocated while refusing a 10^12-element claim"


@pytest.mark.parametrize("reader", sorted(HARNESSES))
def test_atheris_bounded_run(reader, tmp_path):
    pytest.importorskip("atheris")
    new = tmp_path / "new"
    new.mkdir()
    cmd = [sys.executable, str(HERE / "run.py"), reader, f"-max_total_time={SECONDS}", "-rss_limit_mb=3072",
           "-timeout=20", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", str(new), str(CORPUS / reader)]
    # Started by a shell that forks it (no exec): Linux carries a process's peak RSS across exec, so a
    # fuzzer exec'd straight from a test worker that has exported real models (9.5 GB) would read that
    # peak as its own and stop at once with "out-of-memory" over its 3 GB limit.
    cmd = ["sh", "-c", '"$@"; exit $?', "sh", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 120)
    crashes = sorted(p.name for p in tmp_path.glob("*") if p.is_file())
    assert proc.returncode == 0 and not crashes, f"{crashes}\n{proc.stderr[-4000:]}"
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr)
    assert runs and int(runs.group(1)) > len(list((CORPUS / reader).iterdir())), proc.stderr[-2000:]
    print(f"{reader}: {runs.group(1)} executions in {SECONDS} s")
