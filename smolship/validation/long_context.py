"""Parity at long context (issue 29): fill a bundle's whole KV cache with real text and compare the last
quarter of the context with its first quarter.

The default parity scores documents of at most 320 tokens, so a runtime's error at large positions (RoPE
tables far out, a cache kept in a lower precision, attention over thousands of slots) is never seen there.
Here the runner prefills `prefill_len` tokens, then decodes one token per step up to `max_seq_len` (its own
KV-cache loop, as `parity.measure_parity` does), and the reference scores the same tokens. Early = positions
[0, n/4), late = [n - n/4, n): the same run and the same text, so the late/early difference is what position
costs.

Text: the shipped eval set's documents, whole and concatenated (blank line between them), without the
documents calibration reads (`exporter/calibration.held_out_docs`); about 6,500 tokens, so a longer context is
measured over what there is and the result says how many positions that was. Opt-in
(`ValidationSettings.long_context`, `--long-context`): one decode per position costs ~20 s a bundle at 2,048
positions on two cores. The reference rows go through the results cache (`cache.py`), like the short parity's.
"""

from __future__ import annotations

import time

import numpy as np

from smolship import cache, fingerprint
from smolship.fingerprint import tokens_digest
from smolship.runner import ReferenceRunner, Runner
from smolship.validation.parity import LABEL, log_softmax

SHIPPED_TEXT = "smolship eval set, whole documents concatenated (calibration's held-out documents left out)"


def long_text_ids(tokenizer, n: int, eval_file=None) -> tuple[tuple[int, ...], str]:
    """Up to `n` tokens of real text for the long context, and what it is."""
    from smolship.evalset import load_eval
    from smolship.exporter.calibration import held_out_docs

    docs = load_eval(tokenizer, eval_file, max_doc_tokens=10**9)
    what = f"{eval_file}, whole documents concatenated" if eval_file else SHIPPED_TEXT
    if eval_file is None:  # calibration reads the shipped set's last documents: never score on them
        held = {d.id for d in held_out_docs(tokenizer)}
        docs = [d for d in docs if d.id not in held]
    sep = tuple(tokenizer.encode("\n\n"))
    ids: list[int] = []
    for d in docs:
        ids += (list(sep) if ids else []) + list(d.ids)
        if len(ids) >= n:
            break
    return tuple(ids[:n]), what


def windows(n: int) -> tuple[range, range]:
    """(early, late): the first and last quarter of n positions."""
    q = max(1, n // 4)
    return range(0, q), range(n - q, n)


class LongReference:
    """The reference's logits at the scored rows of one long sequence; a reference model whose cache holds
    the whole context is built on first use (weights shared with the source)."""

    def __init__(self, source):
        self.source = source
        self._runners: dict[int, tuple[ReferenceRunner, dict]] = {}

    def _runner(self, n: int) -> tuple[ReferenceRunner, dict]:
        if n not in self._runners:
            runner = ReferenceRunner.from_source(self.source, max_seq_len=n)
            # digest now, while the KV cache is fresh (all zeros: hashed by shape only)
            key = {**fingerprint.base_key(), "model": fingerprint.module_digest(runner.model)}
            self._runners = {n: (runner, key)}  # one at a time: a long cache is the largest buffer here
        return self._runners[n]

    def rows(self, ids: tuple[int, ...], rows: np.ndarray) -> np.ndarray:
        import torch

        runner, key = self._runner(len(ids))
        key = {**key, "threads": torch.get_num_threads(), "ids": tokens_digest([ids]),
               "rows": tokens_digest([tuple(int(r) for r in rows)])}
        compute = lambda: {"logits": runner.logits_rows(ids, rows)}  # noqa: E731
        return cache.results_store().cached("reference-long-logits", key, compute, LABEL, mmap=True)["logits"]


def measure_long_context(runner: Runner, ref: LongReference, tokenizer, prefill_len: int = 32,
                         eval_file=None, progress=None) -> dict:
    """KL(ref || runner) and top-1 agreement over the early and the late quarter of a full context."""
    t0 = time.perf_counter()
    want = int(runner.max_seq_len)
    ids, what = long_text_ids(tokenizer, want, eval_file)
    n = len(ids)
    early, late = windows(n)
    rows = np.concatenate([np.arange(early.start, early.stop), np.arange(late.start, late.stop)])
    where = {int(p): i for i, p in enumerate(rows)}
    ref_logits = ref.rows(ids, rows)
    kl = np.zeros(len(rows))
    top1 = np.zeros(len(rows), dtype=bool)

    def score(positions, got):
        keep = [(j, where[p]) for j, p in enumerate(positions) if p in where]
        if not keep:
            return
        got = np.asarray(got, dtype=np.float32)
        if not np.isfinite(got).all():
            raise ValueError(f"{runner.name} produced non-finite logits at long-context position {positions[0]}")
        j, i = np.array([k[0] for k in keep]), np.array([k[1] for k in keep])
        lp_ref, lp_run = log_softmax(np.asarray(ref_logits[i])), log_softmax(got[j])
        kl[i] = (np.exp(lp_ref) * (lp_ref - lp_run)).sum(-1)
        top1[i] = lp_ref.argmax(-1) == lp_run.argmax(-1)

    n0 = min(prefill_len, n)
    score(list(range(n0)), runner.prefill(ids[:n0]))
    for pos in range(n0, n):
        score([pos], np.asarray(runner.decode(ids[pos]))[None])
        if progress and (pos % 64 == 0 or pos == n - 1):
            progress(f"long context {pos + 1}/{n}", (pos + 1) / n)
    kl = kl.clip(min=0.0)  # tiny negatives are float noise
    e, l = slice(0, len(early)), slice(len(early), len(rows))
    result = {
        "positions": n, "max_seq_len": want, "text": what, "prefill_len": n0,
        "early_positions": [early.start, early.stop], "late_positions": [late.start, late.stop],
        "kld_mean_early": float(kl[e].mean()), "kld_mean_late": float(kl[l].mean()),
        "kld_p99_late": float(np.percentile(kl[l], 99)),
        "top1_early": float(top1[e].mean()), "top1_late": float(top1[l].mean()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if n < want:
        result["note"] = (f"the text holds {n} tokens, so the context was filled to {n} of its {want} positions "
                          "(pass a longer --eval-file to fill it)")
    return result
