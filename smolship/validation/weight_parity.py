"""Parity without the runtime (Core ML off macOS): the target hands back its stored weights as Runners
(`Target.stored_weights`), and this module scores them with the same teacher-forced metrics as every runtime
(validation.parity.measure_parity; each document in one prefill call) against the fp32 reference, on the validator's
documents (--eval-tokens / --eval-file) and its reference (whose logits the results cache shares)."""

from __future__ import annotations

import contextlib
import gc
from dataclasses import replace
from pathlib import Path

import torch

from smolship.evalset import EvalDoc
from smolship.validation.parity import ParitySettings, ReferenceCache, measure_parity

GRAPH_KEYS = ("kld_mean", "top1_agreement", "max_abs_logit_diff", "nll_delta", "greedy_match")
# The fp16-graph check is a diagnostic beside the headline (it emulates fp16 arithmetic, ~5x slower than the
# weights' fp32 pass): the eval set's first documents up to this many tokens, two short greedy prompts.
GRAPH_CHECK_TOKENS = 512
GRAPH_CHECK = ParitySettings(greedy_prompts=2, greedy_tokens=16)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block on `n` intra-op threads. The parity loop is hundreds of tiny single-token steps:
    extra threads barely help them, and on a busy machine OpenMP's spin-waiting makes each attention
    call ~1000x slower (measured 20 ms vs 0.01 ms on 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def leading(docs: list[EvalDoc], tokens: int) -> list[EvalDoc]:
    """The first documents holding `tokens` tokens (at least one)."""
    out, total = [], 0
    for doc in docs:
        if out and total + len(doc.ids) > tokens:
            break
        out.append(doc)
        total += len(doc.ids)
    return out


def weight_parity(target, bundle: Path, manifest: dict, source, reference: ReferenceCache, docs: list[EvalDoc],
                  settings: ParitySettings = ParitySettings(), threads: int = 1, with_graph: bool = True) -> dict | None:
    """measure_parity of the stored weights, plus `fp16_graph` (the converted graph's own precision) and the
    target's facts (structure check, storage); None when the target has no stored-weights view.
    `reference`, `docs`, `settings`: the validator's (Validator.reference / .docs / .settings.parity), so the
    figures follow the user's eval settings like every runtime's."""
    stored = target.stored_weights(bundle, manifest, source)
    if stored is None:
        return None
    seq = max(max(len(d.ids) for d in docs) + settings.greedy_tokens + 8, 256)
    # Each document in one prefill call: there is no runtime here whose decode loop needs proving, only
    # stored weights run by PyTorch, and one call per document is ~30x cheaper than a decode step per token
    # (what lets these figures follow --eval-tokens at the default 4,096 without minutes per bundle).
    settings = replace(settings, prefill_len=seq)
    with torch.inference_mode(), torch_threads(threads):
        runner = stored.weights_runner(seq)
        metrics = measure_parity(runner, reference, docs, settings)
        del runner
        gc.collect()  # the read-back model's fp32 tensors go before the fp16 copy is made
        graph = None
        if with_graph:
            try:
                got = measure_parity(stored.graph_runner(seq), reference, leading(docs, GRAPH_CHECK_TOKENS),
                                     replace(GRAPH_CHECK, prefill_len=seq))
                graph = {k: got[k] for k in GRAPH_KEYS}
            except ValueError as e:  # measure_parity refuses non-finite logits: an fp16 overflow
                graph = {"error": str(e)}
    return {**metrics, "fp16_graph": graph, **stored.facts}
