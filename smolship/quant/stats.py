"""One activation-statistics collector: forward pre-hooks on named modules of the reference model.

Per named input it accumulates ``importance`` = mean x^2 per input channel (llama.cpp's imatrix, the
weights of the grid searches) and, where asked, ``hessian`` = X^T X / n (GPTQ). Runs on one torch thread:
on the shared 2-core machine two spinning OpenMP threads made such passes many times slower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Stats:
    importance: dict[str, torch.Tensor]  # key -> (K,)
    hessian: dict[str, torch.Tensor]  # key -> (K, K)
    tokens: int


@torch.inference_mode()
def collect(model, sequences: list[list[int]], inputs: dict[str, str], hessian_keys=()) -> Stats:
    """`inputs` maps a result key to the module (name in `model`) whose input it measures; `model` is an
    exporter.model.Llama (BUFFERS mode, cache long enough for the longest sequence)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sums: dict[str, torch.Tensor] = {}
    grams: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hessian_keys = set(hessian_keys)
    hooks = []

    def hook_for(key: str):
        def hook(_module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()  # (T, K)
            sums[key] = sums.get(key, 0) + (x * x).sum(0).double()
            counts[key] = counts.get(key, 0) + x.shape[0]
            if key in hessian_keys:  # float32 per sequence (a few hundred tokens), double across them: 4x faster
                grams[key] = grams.get(key, 0) + (x.t() @ x).double()
        return hook

    try:
        for key, module in inputs.items():
            hooks.append(model.get_submodule(module).register_forward_pre_hook(hook_for(key)))
        tokens = 0
        for seq in sequences:
            model(torch.tensor([seq]), torch.tensor([0]))
            tokens += len(seq)
    finally:
        for h in hooks:
            h.remove()
        torch.set_num_threads(threads)
    return Stats({k: (v / counts[k]).float() for k, v in sums.items()},
                 {k: (v / counts[k]).float() for k, v in grams.items()}, tokens)
