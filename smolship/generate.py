"""One generation loop over any Runner: greedy or temperature/top-p sampling, stop tokens, streaming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from smolship.runner import Runner


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


def sample(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / sampling.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < sampling.top_p  # smallest prefix reaching top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(len(p), p=p))


def generate(runner: Runner, prompt_ids: Sequence[int], max_new_tokens: int = 128,
             sampling: Sampling = Sampling(), stop_ids: Sequence[int] = ()) -> Iterator[int]:
    """Yield new token ids one at a time (streaming); stops at a stop id (not yielded) or the budget."""
    rng = np.random.default_rng(sampling.seed)
    max_new_tokens = min(max_new_tokens, runner.max_seq_len - len(prompt_ids))
    if max_new_tokens <= 0:
        return
    logits = runner.prefill(prompt_ids)[-1]
    for i in range(max_new_tokens):
        token = sample(logits, sampling, rng)
        if token in stop_ids:
            return
        yield token
        if i + 1 < max_new_tokens:
            logits = runner.decode(token)


def generate_text(runner: Runner, tokenizer, prompt_ids: Sequence[int], max_new_tokens: int = 128,
                  sampling: Sampling = Sampling(), on_text: Callable[[str], None] | None = None) -> str:
    """Generate and decode; `on_text` receives each new piece of text as it becomes printable."""
    ids: list[int] = []
    shown = ""
    for tok in generate(runner, prompt_ids, max_new_tokens, sampling, tokenizer.stop_ids):
        ids.append(tok)
        text = tokenizer.decode(ids)
        if on_text and not text.endswith("\ufffd"):  # wait for complete UTF-8 characters
            on_text(text[len(shown):])
            shown = text
    text = tokenizer.decode(ids)
    if on_text and len(text) > len(shown):
        on_text(text[len(shown):])
    return text
