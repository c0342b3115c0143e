"""GPTQ (Frantar et al., 2022, arXiv:2210.17323) with the grid as a function.

Columns of ``W (N, K)`` are rounded in input order; each column's rounding error is pushed onto the
columns not yet rounded, weighted by the inverse input Hessian ``H = X^T X / n`` of calibration
activations (the reference implementation's lazy-batch form). ``round_column(j, col)`` returns the codes
and dequantized values of column ``j`` on whatever grid the caller fixed (per-channel int8, affine
blocks with float or integer zero points, symmetric blocks), so one loop serves every target.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Rounder = Callable[[int, Tensor], tuple[Tensor, Tensor]]


@torch.no_grad()
def gptq(w: Tensor, hessian: Tensor, round_column: Rounder, damp: float = 0.01, batch: int = 128) -> Tensor:
    """Codes (N, K) float for `w` (N, K); dead inputs (zero Hessian diagonal) are zeroed before rounding."""
    w = w.detach().float().clone()
    n, k = w.shape
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()  # (K, K)
    codes = torch.empty(n, k)
    for i1 in range(0, k, batch):
        i2 = min(i1 + batch, k)
        w1, h1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            q, deq = round_column(i1 + i, w1[:, i])
            codes[:, i1 + i] = q
            e = (w1[:, i] - deq) / h1[i, i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return codes
