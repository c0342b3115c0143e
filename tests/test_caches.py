"""One forward, every runtime's cache: `Llama.decode` with each target's cache object and module swaps
computes the reference's logits, prefill and decode steps alike (random:tiny, fp32 eager)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smolship.exporter import CacheMode

SEQ = 32


def _coreml(source):
    from smolship.targets.coreml import convention as cv
    from smolship.targets.coreml.stateful import StatefulLlama

    wrap = StatefulLlama(source.build(SEQ, CacheMode.EXPLICIT)).eval()

    def step(ids, start):  # swift-transformers' protocol: a [1, 1, q, past + q] additive mask
        return wrap(ids.int(), torch.from_numpy(cv.causal_mask(ids.shape[1], start).astype(np.float32)))
    return step


def _executorch(source):
    from smolship.targets.executorch.ops import ExportLlama

    wrap = ExportLlama(source.build(SEQ)).eval()
    return lambda ids, start: wrap(ids, torch.tensor([start]))


def _onnx_gqa(source):
    from smolship.targets.onnx.graph_model import FusedDecoder

    wrap = FusedDecoder(source.config, source.state_dict, SEQ).eval()
    past = wrap.empty_past(SEQ)  # genai's shared buffer: max_seq slots, the mask says how many are valid

    def step(ids, start):
        nonlocal past
        logits, *past = wrap(ids, torch.ones(1, start + ids.shape[1], dtype=torch.int64), *past)
        return logits
    return step


def _concat(source):
    model = source.build(SEQ, CacheMode.EXPLICIT)
    past = model.empty_past()

    def step(ids, start):
        nonlocal past
        assert past[0].shape[2] == start  # the past grows by exactly the tokens given
        logits, past = model.forward_explicit(ids, past)
        return logits
    return step


CACHES = {"concat (onnx plain)": _concat, "coreml states": _coreml, "executorch custom ops": _executorch,
          "onnx GroupQueryAttention": _onnx_gqa}


@pytest.mark.parametrize("cache", list(CACHES))
def test_every_cache_computes_the_reference_forward(tiny_model, cache):
    ref = tiny_model.build(SEQ)  # StaticCache: in-place buffers, the reference runner's cache
    run = CACHES[cache](tiny_model)
    ids = torch.randint(0, tiny_model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for start, end in ((0, 9), (9, 10), (10, 12)):  # prefill, a decode step, a 2-token chunk
            want = ref(ids[:, start:end], torch.tensor([start]))
            # fp32, the same math; packed matmuls and kernels reorder sums: noise far below 1e-4 on ~5-sized logits
            torch.testing.assert_close(run(ids[:, start:end], start), want, atol=5e-5, rtol=0)
