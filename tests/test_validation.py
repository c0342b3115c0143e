"""Validation core: metrics are zero against itself, move when the model changes, and latency runs."""

from __future__ import annotations

import torch

from smolship.runner import ReferenceRunner
from smolship.evalset import _builtin_items, load_eval
from smolship.validation.latency import LatencySettings, latency_in_worker, measure_latency
from smolship.validation.parity import ParitySettings, ReferenceCache, measure_parity

KEYS = {"kld_mean", "kld_p99", "top1_agreement", "max_abs_logit_diff", "nll_ref", "nll_delta", "greedy_match"}


def test_eval_set_covers_every_kind_with_enough_tokens(default_model):
    kinds = {item["kind"] for item in _builtin_items()}
    assert {"prose", "chat", "code", "math", "function_call"} <= kinds
    docs = load_eval(default_model.tokenizer, max_doc_tokens=10**6)
    assert sum(len(d.ids) for d in docs) >= 4000
    capped = load_eval(default_model.tokenizer, max_tokens=500)
    assert sum(len(d.ids) for d in capped) <= 500


def test_user_eval_file(tiny_model, tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text(("A first paragraph about boats and the sea, long enough to count. " * 4) + "\n\n" + ("Second one about trains. " * 10))
    docs = load_eval(tiny_model.tokenizer, f)
    assert len(docs) == 2 and docs[0].id == "mine-0"


def test_parity_of_the_reference_with_itself_is_exact(tiny_model):
    docs = load_eval(tiny_model.tokenizer, max_tokens=200)
    ref = ReferenceCache(ReferenceRunner.from_source(tiny_model, max_seq_len=512))
    result = measure_parity(ReferenceRunner.from_source(tiny_model, max_seq_len=512), ref, docs,
                            ParitySettings(greedy_prompts=2, greedy_tokens=8))
    assert KEYS <= set(result)
    assert result["kld_mean"] < 1e-9 and result["top1_agreement"] == 1.0
    assert result["max_abs_logit_diff"] < 1e-4 and abs(result["nll_delta"]) < 1e-6
    assert result["greedy_match"] == 8


def test_parity_detects_a_perturbed_model(tiny_model):
    docs = load_eval(tiny_model.tokenizer, max_tokens=200)
    ref = ReferenceCache(ReferenceRunner.from_source(tiny_model, max_seq_len=512))
    model = tiny_model.build(max_seq_len=512)
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight.mul_(1.5)
    result = measure_parity(ReferenceRunner(model), ref, docs, ParitySettings(greedy_prompts=1, greedy_tokens=8))
    assert result["kld_mean"] > 1e-4 and result["max_abs_logit_diff"] > 1e-2
    assert result["kld_p99"] >= result["kld_mean"]


def test_latency_keys_in_process_and_in_a_worker(tiny_model):
    runner = ReferenceRunner.from_source(tiny_model, max_seq_len=256)
    res = measure_latency(runner, tiny_model.config.vocab_size, LatencySettings(16, 8, 2))
    assert res["prefill_tok_s"] > 0 and res["decode_tok_s"] > 0 and res["ttft_ms"] > 0
    worker = latency_in_worker("reference:random:tiny", LatencySettings(16, 8, 1, threads=1))
    assert worker["threads"] == 1 and worker["peak_rss_mb"] > 50 and worker["new_tokens"] == 8


def test_latency_fits_a_short_cache(tiny_model):
    """--max-seq-len 128 with the default 128-token prompt once left -1 tokens to decode (negative tok/s)."""
    runner = ReferenceRunner.from_source(tiny_model, max_seq_len=128)
    res = measure_latency(runner, tiny_model.config.vocab_size, LatencySettings(128, 128, 1))
    assert res["prompt_tokens"] == 63 and res["new_tokens"] == 64 and res["decode_tok_s"] > 0
