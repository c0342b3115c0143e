"""Parity at a full context and memory with the cache full (issue 29), on random:tiny bundles."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_OPTIONS, TINY_PACKAGES, TINY_RECIPES
from smolship.export import export_bundle
from smolship.runner import ReferenceRunner
from smolship.targets import get_target
from smolship.validation.gates import Thresholds, check
from smolship.validation.long_context import LongReference, long_text_ids, measure_long_context, windows
from smolship.validation.parity import ParitySettings
from smolship.validation.report import bundle_row, write_reports
from smolship.validation.validate import ValidationSettings, Validator


@pytest.fixture(scope="module")
def long_validator(tiny_model):
    return Validator(tiny_model, ValidationSettings(eval_tokens=128, measure_latency=False, long_context=True,
                                                    parity=ParitySettings(greedy_prompts=1, greedy_tokens=8)))


@pytest.fixture(scope="module")
def long_bundles(tiny_model, long_validator, tmp_path_factory):
    out, made = tmp_path_factory.mktemp("long_bundles"), {}

    def get(target: str):
        pytest.importorskip(TINY_PACKAGES[target])
        if target not in made:
            made[target] = export_bundle(tiny_model, target, get_target(target).recipes[TINY_RECIPES[target]], out,
                                         TINY_OPTIONS[target], validator=long_validator)
        return made[target]
    return get


def test_long_text_is_eval_text_without_calibration_documents(tiny_model):
    from smolship.evalset import load_eval
    from smolship.exporter.calibration import held_out_docs

    ids, what = long_text_ids(tiny_model.tokenizer, 10**6)
    assert "eval set" in what and 5000 < len(ids) < 10**6  # the whole set, less the held-out documents
    held = held_out_docs(tiny_model.tokenizer)
    text = bytes(np.asarray(ids, dtype=np.int64))
    for d in held:  # no calibration document's opening appears in the long context
        assert bytes(np.asarray(d.ids[:40], dtype=np.int64)) not in text
    first = load_eval(tiny_model.tokenizer, max_doc_tokens=10**9)[0]
    assert ids[:len(first.ids)] == first.ids  # real text from the start of the eval set
    assert len(long_text_ids(tiny_model.tokenizer, 300)[0]) == 300


class LateDrift(ReferenceRunner):
    """The reference with its logits pushed off after 3/4 of its cache: what a runtime that goes wrong at large
    positions looks like."""

    def _perturb(self, logits, first_pos):
        logits = np.array(logits)
        for i in range(len(logits)):
            if first_pos + i >= 3 * self.max_seq_len // 4:
                logits[i] = logits[i] + np.random.default_rng(first_pos + i).normal(0, 3, logits.shape[-1])
        return logits

    def prefill(self, ids):
        return self._perturb(super().prefill(ids), 0)

    def decode(self, token):
        pos = self.pos
        return self._perturb(super().decode(token)[None], pos)[0]


def test_late_positions_are_scored_apart_from_early_ones(tiny_model):
    """A runner exact early and wrong late: early kld ~0, late kld large (the measurement can fail)."""
    ref = LongReference(tiny_model)
    exact = ReferenceRunner.from_source(tiny_model, max_seq_len=96)
    same = measure_long_context(exact, ref, tiny_model.tokenizer, prefill_len=16)
    assert same["positions"] == 96 and same["late_positions"] == [72, 96] and same["early_positions"] == [0, 24]
    assert same["kld_mean_early"] < 1e-6 and same["kld_mean_late"] < 1e-6 and same["top1_late"] == 1.0
    drift = LateDrift(tiny_model.build(max_seq_len=96, share_weights=True))
    got = measure_long_context(drift, ref, tiny_model.tokenizer, prefill_len=16)
    assert got["kld_mean_early"] < 1e-6 and got["kld_mean_late"] > 0.1 and got["top1_late"] < 0.9


def test_windows_are_quarters():
    assert windows(128) == (range(0, 32), range(96, 128))
    assert windows(3) == (range(0, 1), range(2, 3))


@pytest.mark.parametrize("target", ["gguf", "onnx"])
def test_long_context_parity_in_the_runtime_is_recorded_and_gated(long_bundles, target, tmp_path):
    path, manifest = long_bundles(target)
    lc = manifest["validation"]["long_context"]
    assert lc["positions"] == manifest["max_seq_len"] == 128  # the whole cache filled
    assert lc["late_positions"] == [96, 128] and lc["early_positions"] == [0, 32]
    for k in ("kld_mean_early", "kld_mean_late", "top1_early", "top1_late"):
        assert np.isfinite(lc[k]) and lc[k] >= 0
    if target == "onnx":  # fp32: the runtime agrees with the reference at every position
        assert lc["kld_mean_late"] < 1e-4 and lc["top1_late"] > 0.95
    row = bundle_row(path, manifest)
    assert row["late_kld_mean"] == lc["kld_mean_late"] and row["early_kld_mean"] == lc["kld_mean_early"]
    late = lc["kld_mean_late"]
    assert late > 0
    failed = check(row, Thresholds(max_late_kld=late / 2))
    assert not failed.passed and any("late_kld_mean" in f for f in failed.failures)
    assert check(row, Thresholds(max_late_kld=late * 2)).passed
    report = tmp_path / "r"
    report.mkdir()
    write_reports(report, [path])
    md = (report / "report.md").read_text()
    assert "## Long context" in md and "late_kld_mean" in md
    assert "Long context" in (report / "report.html").read_text()
    assert "long context: kld_mean early" in (path / "README.md").read_text()


def test_a_late_kld_bound_without_the_measurement_is_not_passed_silently():
    row = {"bundle": "b", "kld_mean": 0.001}
    got = check(row, Thresholds(max_late_kld=0.01))
    assert got.passed and any("late_kld_mean not measured" in n for n in got.notes)


def test_full_context_peak_rss_is_measured_in_a_fresh_worker(long_bundles, long_validator):
    """--long-context's latency pass fills the cache to max_seq_len and records that peak; the default does not
    (it would cost one decode per position)."""
    from dataclasses import replace

    from smolship.validation.latency import latency_in_worker

    path, manifest = long_bundles("gguf")
    quick = replace(long_validator.latency_settings(), runs=1, prompt_tokens=16, new_tokens=8)
    assert quick.full_context
    got = latency_in_worker(path, quick)
    assert got["full_context_positions"] == manifest["max_seq_len"] == 128
    assert got["full_context_peak_rss_mb"] >= got["peak_rss_mb"] > 10
    plain = latency_in_worker(path, replace(quick, full_context=False))
    assert "full_context_peak_rss_mb" not in plain
    from smolship.validation.validate import save_latency

    save_latency(path, manifest, got)
    row = bundle_row(path)
    assert row["full_context_peak_rss_mb"] == got["full_context_peak_rss_mb"]
    assert "with the cache full (128 positions)" in (path / "README.md").read_text()


def test_inspect_shows_the_cache_cost_and_the_long_context_figures(long_bundles):
    from test_cli import smolship

    path, manifest = long_bundles("gguf")
    proc = smolship("inspect", str(path))
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "KV cache" in out and "0.0 MB at 128 positions" not in out  # 2 layers x 2 heads x 16 x 128 x 2 x 4 B
    assert "0.1 MB at 128 positions" in out and "long context kld early / late" in out


def test_the_cache_cost_per_model_size_is_what_the_readme_says():
    from pathlib import Path

    from smolship.exporter.config import PRESETS
    from smolship.preflight import kv_cache_text

    readme = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    for name, at_default, at_max in [("smollm2-135m", "94.4 MB", "377.5 MB"), ("smollm2-360m", "167.8 MB", "671.1 MB"),
                                     ("smollm2-1.7b", "805.3 MB", "3.22 GB")]:
        text = kv_cache_text(PRESETS[name])
        assert f"{at_default} at 2048 positions (export's default --max-seq-len)" in text
        assert f"{at_max} at the model's 8192" in text
        assert f"| {at_default} | {at_max} |" in readme
