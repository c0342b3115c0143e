"""The shared generation loop: greedy, sampling, stop tokens, streaming."""

from __future__ import annotations

import numpy as np
import pytest

from smolship.generate import Sampling, generate, generate_text, sample
from smolship.runner import ReferenceRunner


def test_greedy_follows_argmax_of_the_reference(tiny_model):
    runner = ReferenceRunner.from_source(tiny_model, max_seq_len=64)
    prompt = tiny_model.tokenizer.encode("Greedy decoding is deterministic")
    out = list(generate(runner, prompt, 8))
    ids = list(prompt)
    for tok in out:  # re-score the growing sequence from scratch each step
        assert tok == int(np.argmax(runner.prefill(ids)[-1]))
        ids.append(tok)
    assert len(out) == 8


def test_stop_token_ends_generation_and_is_not_yielded(tiny_model):
    runner = ReferenceRunner.from_source(tiny_model, max_seq_len=64)
    prompt = tiny_model.tokenizer.encode("Stop here")
    free = list(generate(runner, prompt, 6))
    stopped = list(generate(runner, prompt, 6, stop_ids=[free[3]]))
    assert stopped == free[: free.index(free[3])]


def test_generation_respects_the_cache_size(tiny_model):
    runner = ReferenceRunner.from_source(tiny_model, max_seq_len=12)
    assert len(list(generate(runner, list(range(100, 110)), 50))) == 2


def test_top_p_sampling_is_seeded_and_stays_in_the_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    draws = {sample(logits, Sampling(temperature=1.0, top_p=0.75), rng) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 is the smallest prefix reaching 0.75: tokens 2 and 3 are outside the nucleus
    a = [sample(logits, Sampling(1.0, 1.0), np.random.default_rng(7)) for _ in range(5)]
    b = [sample(logits, Sampling(1.0, 1.0), np.random.default_rng(7)) for _ in range(5)]
    assert a == b


@pytest.mark.slow
def test_reference_answers_paris_and_streams(default_model):
    runner = ReferenceRunner.from_source(default_model, max_seq_len=256)
    tok = default_model.tokenizer
    pieces: list[str] = []
    text = generate_text(runner, tok, tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}]),
                         64, on_text=pieces.append)
    assert "Paris" in text and "".join(pieces) == text and len(pieces) > 3
