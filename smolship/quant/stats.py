"""One activation-statistics collector: forward pre-hooks on named modules of the reference model.

Per named input it accumulates ``importance`` = mean x^2 per input channel (llama.cpp's imatrix, the
weights of the grid searches) and, where asked, ``hessian`` = X^T X / n (GPTQ). Runs on one torch thread:
on the shared 2-core machine two spinning OpenMP threads made such passes many times slower.

Every target's statistics pass comes through here, so the results cache (smolship/cache.py) sits here too:
one computation per (model weights, sequences, what is collected), shared by every recipe, target and later
run; the key is the digest of the model actually run (smolship/fingerprint.py), so a cached result is the
fresh one's bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from smolship import cache, fingerprint

LABEL = "calibration statistics"  # what the export's summary calls a reuse


@dataclass
class Stats:
    importance: dict[str, torch.Tensor]  # key -> (K,)
    hessian: dict[str, torch.Tensor]  # key -> (K, K)
    tokens: int


def collect(model, sequences: list[list[int]], inputs: dict[str, str], hessian_keys=(), use_cache: bool = True) -> Stats:
    """`inputs` maps a result key to the module (name in `model`) whose input it measures; `model` is an
    exporter.model.Llama (BUFFERS mode, cache long enough for the longest sequence). Served from the
    results cache when the same model saw the same sequences before (`use_cache`)."""
    if not use_cache:
        return _collect(model, sequences, inputs, hessian_keys)
    key = {**fingerprint.base_key(), "model": fingerprint.module_digest(model),
           "sequences": fingerprint.tokens_digest(sequences), "inputs": sorted(inputs.items()),
           "hessian": sorted(set(hessian_keys))}
    arrays = cache.results_store().cached("calibration-statistics", key,
                                          lambda: to_arrays(_collect(model, sequences, inputs, hessian_keys)), LABEL)
    return from_arrays(arrays)


def to_arrays(stats: Stats) -> dict[str, np.ndarray]:
    return {**{f"importance/{k}": v.numpy() for k, v in stats.importance.items()},
            **{f"hessian/{k}": v.numpy() for k, v in stats.hessian.items()}, "tokens": np.asarray(stats.tokens)}


def from_arrays(arrays: dict[str, np.ndarray]) -> Stats:
    part = lambda prefix: {k.removeprefix(prefix): torch.from_numpy(np.array(v)) for k, v in arrays.items()  # noqa: E731
                           if k.startswith(prefix)}
    return Stats(part("importance/"), part("hessian/"), int(arrays["tokens"]))


@torch.inference_mode()
def _collect(model, sequences: list[list[int]], inputs: dict[str, str], hessian_keys=()) -> Stats:
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
