"""GPTQ for ExecuTorch's per-channel int8 weights, on the shared core (smolship/quant: one GPTQ loop
taking the grid as a function).

Why here: the default model's weights sit on a 4-bit grid with one scale per block of 32, and a
single int8 scale per output row cannot land on that grid; round-to-nearest int8 on every linear
costs ~0.004 KL on its own (measured), GPTQ cuts the output error that rounding causes. The
Hessians come from one fp32 forward over calibration text (quant.stats.collect, in quantize.apply_plan).
"""

from __future__ import annotations

import torch
from torch import Tensor

from smolship.quant.gptq import gptq


@torch.no_grad()
def gptq_per_channel(w: Tensor, hessian: Tensor, scale: Tensor, bits: int = 8, damp: float = 0.01,
                     block: int = 128) -> Tensor:
    """Integer weights q (int8 [out, in]) for a fixed per-row `scale` ([out, 1]) minimizing the
    Hessian-weighted output error; round-to-nearest where the Hessian carries no information."""
    qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    s = scale.reshape(-1)

    def round_column(_j: int, col: Tensor) -> tuple[Tensor, Tensor]:
        q = torch.round(col / s).clamp(qmin, qmax)
        return q, q * s
    return gptq(w, hessian, round_column, damp=damp, batch=block).to(torch.int8)
