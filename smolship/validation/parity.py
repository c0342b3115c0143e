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

from smolship import cache, fingerprint
from smolship.fingerprint import tokens_digest
from smolship.generate import generate
from smolship.runner import Runner
from smolship.evalset import EvalDoc


LABEL = "reference logits"  # what the export's summary calls a reuse


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
    """The reference's logits and greedy tokens per document, computed once and reused by every bundle.

    In this process each document's result is kept after its first use; across processes and runs, the
    results cache (smolship/cache.py) holds them under the digest of the reference model's weights, its
    cache length and thread count (smolship/fingerprint.py), one float32 .npy per document (~200 KB per
    token at a 49,152 vocabulary: 4,096 eval tokens are 805 MB), read back memory-mapped, bit for bit.
    A reference without a torch model (`reference.model`) or `use_cache=False` is only kept in memory."""

    def __init__(self, reference: Runner, use_cache: bool = True):
        self.reference = reference
        self._logits: dict[tuple, np.ndarray] = {}
        self._greedy: dict[tuple, list[int]] = {}
        model = getattr(reference, "model", None)
        self._key = None
        if use_cache and model is not None and hasattr(model, "named_parameters"):
            # digest now, while the KV cache is fresh (all zeros: hashed by shape only)
            self._key = {**fingerprint.base_key(), "model": fingerprint.module_digest(model)}

    def logits(self, doc: EvalDoc) -> np.ndarray:
        key = doc.ids
        if key not in self._logits:
            compute = lambda: {"logits": self._prefill(doc.ids)}  # noqa: E731
            self._logits[key] = self._stored("reference-logits", {"ids": tokens_digest([doc.ids])}, compute)["logits"]
        else:
            cache.note(LABEL, True)
        return self._logits[key]

    def _prefill(self, ids) -> np.ndarray:
        return np.asarray(self.reference.prefill(ids), dtype=np.float32)  # one call: same math as the loop

    def greedy(self, prompt: tuple[int, ...], n: int) -> list[int]:
        key = (tuple(prompt), n)
        if key not in self._greedy:
            compute = lambda: {"tokens": np.asarray(list(generate(self.reference, prompt, n)), dtype=np.int64)}  # noqa: E731
            got = self._stored("reference-greedy", {"prompt": tokens_digest([prompt]), "n": n}, compute)
            self._greedy[key] = [int(t) for t in got["tokens"]]
        else:
            cache.note(LABEL, True)
        return self._greedy[key]

    def _stored(self, kind: str, part: dict, compute) -> dict[str, np.ndarray]:
        if self._key is None:
            cache.note(LABEL, False)
            return compute()
        import torch

        key = {**self._key, "threads": torch.get_num_threads(), **part}  # threads as they are for this computation
        return cache.results_store().cached(kind, key, compute, LABEL, mmap=True)


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
            progress(f"parity {i + 1}/{len(docs)} ({doc.id})", (i + 1) / (len(docs) + settings.greedy_prompts))
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
