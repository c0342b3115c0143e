"""Session fixtures shared by test_matrix.py (local processes) and test_ray.py (Ray): one spec of two tiny
models and a broken one, and its run on local processes. Imported once by conftest.py so that both
modules get the same fixture instances (a module-level import would run the matrix twice)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MATRIX_SPEC = """
models = ["{tiny_a}", {{source = "{tiny_b}", name = "tiny-b"}}, {{source = "random:no-such-preset", name = "broken"}}]
targets = ["gguf", "onnx"]
max_seq_len = 256
[recipes]
gguf = ["q8_0"]
onnx = ["fp32"]
[eval]
tokens = 128
latency = false
threads = 1
[resources]
memory_gb = 1.5   # tiny jobs; the estimate from the config is tested on its own below
max_retries = 1
[gate]
max_kld = 0.5
min_top1 = 0.0
"""


def tiny_folders(tiny_model, root: Path) -> tuple[Path, Path]:
    """random:tiny (seed 0) and the same config at seed 1, as Hugging Face folders: two different models
    whose workers read tokenizer.json (random: sources parse the 135M GGUF's vocabulary on every load)."""
    import dataclasses

    from smolship.exporter.model import CacheMode, Llama
    from test_sources import save_hf_folder

    seed1 = Llama(tiny_model.config, max_seq_len=16, cache_mode=CacheMode.EXPLICIT).init_random(1).state_dict()
    seed1 = {k: v for k, v in seed1.items() if k in tiny_model.state_dict}  # tied lm_head stays out, as in random:
    return (save_hf_folder(tiny_model, root / "random-tiny"),
            save_hf_folder(dataclasses.replace(tiny_model, state_dict=seed1), root / "tiny-b"))


@pytest.fixture(scope="session")
def matrix_spec(tiny_model, tmp_path_factory) -> Path:
    """Two tiny models (seed 0 and seed 1) and a broken one."""
    root = tmp_path_factory.mktemp("matrix-spec")
    tiny_a, tiny_b = tiny_folders(tiny_model, root)
    spec = root / "release.toml"
    spec.write_text(MATRIX_SPEC.format(tiny_a=tiny_a, tiny_b=tiny_b))
    return spec


def model_hashes(report: dict) -> dict[str, str]:
    """bundle -> sha256 of each model file, from the manifests the report points at."""
    out = {}
    for row in report["rows"]:
        m = json.loads((Path(row["path"].removeprefix("file://")) / "manifest.json").read_text())
        for f in m["model_files"]:
            for rel, info in m["files"].items():
                if rel.split("/")[0] == f:
                    out[f"{row['bundle']}/{rel}"] = info["sha256"]
    return out


@pytest.fixture(scope="session")
def local_matrix(matrix_spec, tmp_path_factory) -> dict:
    """The spec on local processes (--jobs 2), with the worker of tiny-b/onnx killed once mid-run."""
    out = tmp_path_factory.mktemp("matrix-local") / "release"
    fault = out.parent / "fault"
    fault.write_text("tiny-b/onnx")
    env = {**os.environ, "SMOLSHIP_MATRIX_FAULT": str(fault)}
    proc = subprocess.run([sys.executable, "-c", "from smolship.cli.app import main; main()", "matrix", str(matrix_spec),
                           "--out", str(out), "--jobs", "2", "--gate", "--json"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 1, proc.stderr  # the broken model's jobs fail; everything else is kept
    assert not fault.exists() and fault.with_name("fault.fired").exists()  # the armed worker did die
    return {"report": json.loads(proc.stdout), "out": out, "stderr": proc.stderr}
