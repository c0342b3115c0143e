"""Parity of a Runner against the PyTorch reference, teacher-forced through the runner's own KV cache.

For each eval document: the runner prefills the first `prefill_len` tokens, then decodes the rest one
token at a time (the real decode loop); the reference scores the same tokens. Metrics, over all
positions: KL(ref || runner) mean and p99, top-1 agreement, max |Δlogit|, reference NLL and its change.
`greedy_match`: mean number of greedy tokens the runner produces before it first differs from the
reference's greedy output, over the first `greedy_prompts` documents' opening tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smolship.generate import generate
from smolship.runner import Runner
from smolship.evalset import EvalDoc


@dataclass(frozen=True)
class ParitySettings:
    prefill_len: int = 32
    greedy_prompts: int = 4
    greedy_prompt_len: int = 32
    greedy_tokens: int = 32


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def teacher_forced_logits(runner: Runner, ids: tuple[int, ...], prefill_len: int) -> np.ndarray:
    """(len(ids), vocab) logits from one prefill then one decode per remaining token."""
    n0 = min(prefill_len, len(ids))
    rows = [np.asarray(runner.prefill(ids[:n0]), dtype=np.float32)]
    rows += [np.asarray(runner.decode(t), dtype=np.float32)[None] for t in ids[n0:]]
    return np.concatenate(rows, axis=0)


class ReferenceCache:
    """Reference logits/greedy outputs, computed once per (document, settings) and reused across bundles."""

    def __init__(self, reference: Runner):
        self.reference = reference
        self._greedy: dict[tuple, list[int]] = {}

    def logits(self, doc: EvalDoc) -> np.ndarray:
        return np.asarray(self.reference.prefill(doc.ids), dtype=np.float32)  # one call: same math as the loop

    def greedy(self, prompt: tuple[int, ...], n: int) -> list[int]:
        key = (prompt, n)
        if key not in self._greedy:
            self._greedy[key] = list(generate(self.reference, prompt, n))
        return self._greedy[key]


def greedy_agreement(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def measure_parity(runner: Runner, ref: ReferenceCache, docs: list[EvalDoc],
                   settings: ParitySettings = ParitySettings(), progress=None, logits_out: list | None = None) -> dict:
    """`logits_out`, when given, receives each document's teacher-forced logits (to compare two runtimes)."""
    kl_all, top1_all, nll_ref, nll_run = [], [], [], []
    max_diff = 0.0
    for i, doc in enumerate(docs):
        # an artifact with a short cache is measured on the part of each document that fits (causal:
        # the reference's first n rows are its logits for the first n tokens)
        n = min(len(doc.ids), getattr(runner, "max_seq_len", None) or len(doc.ids))
        ids = doc.ids[:n]
        ref_logits = ref.logits(doc)[:n]
        got = teacher_forced_logits(runner, ids, settings.prefill_len)
        if not np.isfinite(got).all():
            raise ValueError(f"{runner.name} produced non-finite logits on eval document '{doc.id}'")
        if logits_out is not None:
            logits_out.append(got)
        lp_ref, lp_run = log_softmax(ref_logits), log_softmax(got)
        kl_all.append((np.exp(lp_ref) * (lp_ref - lp_run)).sum(-1))
        top1_all.append(ref_logits.argmax(-1) == got.argmax(-1))
        max_diff = max(max_diff, float(np.abs(ref_logits - got).max()))
        targets = np.asarray(ids[1:])
        rows = np.arange(len(targets))
        nll_ref.append(-lp_ref[rows, targets])
        nll_run.append(-lp_run[rows, targets])
        if progress:
            progress(f"parity {doc.id}", (i + 1) / (len(docs) + settings.greedy_prompts))
    kl = np.concatenate(kl_all).clip(min=0.0)  # tiny negatives are float noise
    matches = []
    for j, doc in enumerate(docs[: settings.greedy_prompts]):
        prompt = doc.ids[: settings.greedy_prompt_len]
        want = ref.greedy(prompt, settings.greedy_tokens)
        got_tokens = list(generate(runner, prompt, settings.greedy_tokens))
        matches.append(greedy_agreement(want, got_tokens))
        if progress:
            progress("greedy", (len(docs) + j + 1) / (len(docs) + settings.greedy_prompts))
    n_ref, n_run = np.concatenate(nll_ref), np.concatenate(nll_run)
    return {
        "kld_mean": float(kl.mean()),
        "kld_p99": float(np.percentile(kl, 99)),
        "top1_agreement": float(np.concatenate(top1_all).mean()),
        "max_abs_logit_diff": max_diff,
        "nll_ref": float(n_ref.mean()),
        "nll_delta": float(n_run.mean() - n_ref.mean()),
        "greedy_match": float(np.mean(matches)) if matches else None,
        "greedy_tokens": settings.greedy_tokens,
        "eval_tokens": int(kl.size),  # tokens actually compared (documents clipped to the cache)
        "eval_docs": len(docs),
    }
