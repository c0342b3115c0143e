"""The converted graph (stateful.StatefulLlama) executed in PyTorch at fp16 - Core ML's precision - off macOS.

It speaks the package's own protocol (int32 ``inputIds``, fp16 additive ``causalMask`` whose width
gives the past length, fp16 ``keyCache``/``valueCache`` states), so it exercises exactly what the
Core ML runner sends. It is an emulation: PyTorch's CPU kernels are not Core ML's (accumulation
order and precision differ), but fp16 ranges are the same, so overflow and fp16 rounding of the
activations and the cache show up here before a Mac ever sees the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from smolship.exporter.model import CacheMode, Llama
from smolship.runner import Runner
from smolship.targets.coreml import convention as cv
from smolship.targets.coreml.stateful import StatefulLlama


class GraphRunner(Runner):
    name = "coreml-graph-fp16"

    def __init__(self, cfg, state_dict: dict[str, torch.Tensor], max_seq_len: int, dtype=torch.float16):
        weights = {k: v.to(dtype) for k, v in state_dict.items()}  # cast first: no fp32 model copy
        model = Llama.with_weights(cfg, weights, max_seq_len, CacheMode.EXPLICIT)
        self.graph = StatefulLlama(model).eval().to(dtype)  # weights, RoPE tables and states in `dtype`
        self.dtype = dtype
        self.max_seq_len = max_seq_len
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0  # stale state slots lie beyond the mask's width: never read

    @torch.inference_mode()
    def _run(self, ids: Sequence[int]) -> np.ndarray:
        q = len(ids)
        mask = torch.from_numpy(cv.causal_mask(q, self.pos)).to(self.dtype)
        logits = self.graph(torch.tensor([list(ids)], dtype=torch.int32), mask)
        self.pos += q
        return logits[0].float().numpy()  # (q, vocab)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.reset()
        self._check_room(0, len(ids))
        return self._run(ids)

    def decode(self, token: int) -> np.ndarray:
        self._check_room(self.pos, 1)
        return self._run([int(token)])[-1]
