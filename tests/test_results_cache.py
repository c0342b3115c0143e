"""The results cache (smolship/cache.py): a cached figure is the fresh one's bits (parity and calibration
statistics), a model edited after loading is not served the original's results, --no-cache bypasses the
cache, the size bound evicts the least recently used entries, and a corrupt entry is recomputed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from smolship import cache
from smolship.evalset import load_eval
from smolship.exporter import calibration
from smolship.runner import ReferenceRunner
from smolship.validation.parity import ParitySettings, ReferenceCache, measure_parity


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOLSHIP_RESULTS_CACHE", str(tmp_path / "results"))
    return cache.results_store()


def test_cached_parity_is_the_fresh_parity_bit_for_bit(tiny_model, store):
    docs = load_eval(tiny_model.tokenizer, max_tokens=200)
    model = tiny_model.build(max_seq_len=512)
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight.mul_(1.5)  # a runner that differs, so the figures are not all zero
    settings = ParitySettings(greedy_prompts=2, greedy_tokens=8)

    def parity(use_cache: bool) -> tuple[dict, dict]:
        before = cache.usage()
        ref = ReferenceCache(ReferenceRunner.from_source(tiny_model, max_seq_len=512), use_cache=use_cache)
        return measure_parity(ReferenceRunner(model), ref, docs, settings), cache.usage_since(before)

    fresh, _ = parity(False)
    stored, how = parity(True)
    assert how == {"reference logits": "computed"} and store.size_bytes() > 0
    again, how = parity(True)  # a new reference runner: every document and greedy prompt from the store
    assert how == {"reference logits": "cached"}
    assert fresh == stored == again, (fresh, again)  # every figure (kld_mean, kld_p99, ...) to the last bit
    assert fresh["kld_mean"] > 1e-4


def test_cached_statistics_are_the_fresh_ones_bit_for_bit(tiny_model, store):
    seqs = calibration.calibration_set(tiny_model, None, max_tokens=512).sequences
    fresh = calibration.collect(tiny_model, seqs, want_hessian=True, use_cache=False)
    before = cache.usage()
    stored = calibration.collect(tiny_model, seqs, want_hessian=True)
    again = calibration.collect(tiny_model, seqs, want_hessian=True)
    assert cache.usage_since(before) == {"calibration statistics": "1 of 2 cached"}
    for got in (stored, again):
        assert got.tokens == fresh.tokens and got.importance.keys() == fresh.importance.keys()
        assert all(torch.equal(got.importance[k], v) for k, v in fresh.importance.items())
        assert all(torch.equal(got.hessian[k], v) for k, v in fresh.hessian.items()) and fresh.hessian


def test_an_edited_model_is_not_served_the_originals_statistics(tiny_model, store):
    """The key is the digest of the weights actually run (ExecuTorch folds SmoothQuant scales into a built
    copy before its statistics pass), not the file the model came from."""
    from smolship.quant.stats import collect

    seqs = calibration.calibration_set(tiny_model, None, max_tokens=256).sequences
    inputs = {"down": "layers.1.mlp.down_proj"}
    model = tiny_model.build(max_seq_len=300)
    first = collect(model, seqs, inputs)
    edited = tiny_model.build(max_seq_len=300)
    with torch.no_grad():
        edited.layers[0].post_attention_layernorm.weight.mul_(2.0)
    before = cache.usage()
    second = collect(edited, seqs, inputs)
    assert cache.usage_since(before) == {"calibration statistics": "computed"}
    assert not torch.equal(first.importance["down"], second.importance["down"])


def _entry(store, kind, key):
    return store._entry(kind, cache.key_digest(kind, key))


def test_the_size_bound_evicts_the_least_recently_used(tmp_path):
    arrays = {"x": np.zeros(1000, dtype=np.float32)}  # 4,128 bytes as .npy
    store = cache.Store(tmp_path, limit=int(3.5 * 4128))
    now = time.time()
    for i, name in enumerate("abc"):
        assert store.put("k", {"n": name}, arrays)
        os.utime(_entry(store, "k", {"n": name}) / cache.ENTRY, (now - 30 + 10 * i,) * 2)  # a oldest, c newest
    assert store.get("k", {"n": "a"}) is not None  # a read: now the most recently used
    assert store.put("k", {"n": "d"}, arrays)  # four entries do not fit: the least recently used (b) goes
    assert store.get("k", {"n": "b"}) is None
    assert all(store.get("k", {"n": n}) is not None for n in "acd")
    assert store.size_bytes() <= store.limit
    assert not store.put("k", {"n": "huge"}, {"x": np.zeros(10_000, dtype=np.float32)})  # alone over the bound
    assert store.get("k", {"n": "huge"}) is None and store.get("k", {"n": "d"}) is not None


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "garble entry.json"])
def test_a_corrupt_entry_is_recomputed(tmp_path, damage):
    store = cache.Store(tmp_path, limit=10**9)
    want = np.arange(64, dtype=np.float32)
    calls = []

    def compute():
        calls.append(1)
        return {"x": want.copy()}

    store.cached("k", {"a": 1}, compute, "test")
    entry = _entry(store, "k", {"a": 1})
    npy = entry / "0.npy"
    if damage == "flip a byte":
        raw = bytearray(npy.read_bytes())
        raw[-1] ^= 0xFF
        npy.write_bytes(bytes(raw))
    elif damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:-8])
    else:
        (entry / cache.ENTRY).write_text("{not json")
    got = store.cached("k", {"a": 1}, compute, "test")
    assert len(calls) == 2 and np.array_equal(got["x"], want)
    assert np.array_equal(store.get("k", {"a": 1})["x"], want)  # the recomputed entry replaced the damaged one


def _cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMOLSHIP_CACHE": str(tmp_path / "cache")}
    env.pop("SMOLSHIP_RESULTS_CACHE", None)
    return subprocess.run([sys.executable, "-c", "from smolship.cli.app import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=900)


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob(cache.ENTRY)}


def test_a_second_export_reuses_the_cache_and_says_so_and_no_cache_bypasses_it(tmp_path):
    out, results = tmp_path / "out", tmp_path / "cache" / "results"
    export = ("export", "random:tiny", "--target", "gguf", "--quant", "q8_0", "--eval-tokens", "128",
              "--out", str(out), "--force")
    manifest = lambda: json.loads((out / "gguf-q8_0" / "manifest.json").read_text())  # noqa: E731

    first = _cli(tmp_path, *export)
    assert first.returncode == 0, first.stderr
    assert manifest()["cache"] == {"reference logits": "computed"} and _snapshot(results)
    second = _cli(tmp_path, *export)
    assert second.returncode == 0, second.stderr
    assert manifest()["cache"] == {"reference logits": "cached"}
    assert "reference logits: cached" in second.stdout + second.stderr
    kld = manifest()["validation"]["kld_mean"]

    stored = _snapshot(results)
    bypass = _cli(tmp_path, *export, "--no-cache")
    assert bypass.returncode == 0, bypass.stderr
    assert manifest()["cache"] == {"reference logits": "computed"} and manifest()["validation"]["kld_mean"] == kld
    assert _snapshot(results) == stored  # nothing read (no mtime refreshed) and nothing added

    validate = ("validate", str(out / "gguf-q8_0"), "--no-latency", "--eval-tokens", "128")
    assert "reference logits: computed" in _cli(tmp_path, *validate, "--no-cache").stdout
    assert _snapshot(results) == stored
    assert "reference logits: cached" in _cli(tmp_path, *validate).stdout


def test_an_unwritable_cache_costs_the_reuse_not_the_computation(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = cache.Store(blocker / "results", limit=10**9)  # nothing can be created under a file
    got = store.cached("k", {"a": 1}, lambda: {"x": np.ones(3, dtype=np.float32)}, "test")
    assert np.array_equal(got["x"], np.ones(3))


def test_a_killed_writers_partial_entry_is_ignored_then_removed(tmp_path):
    store = cache.Store(tmp_path, limit=10**9)
    partial = tmp_path / "k" / ".0123abcd-xyz"
    partial.mkdir(parents=True)
    (partial / cache.ENTRY).write_text(json.dumps({"arrays": {"x": {"bytes": 10**12}}}))
    assert store.entries() == []
    old = time.time() - 2 * cache.STALE_SECONDS
    os.utime(partial, (old, old))
    assert partial in store.evict() and not partial.exists()
