"""Integer grids for blocks of weights: affine (float or integer zero point) and symmetric, with searches.

A `Grid` says, per block, ``w ≈ scale * (q - zero)`` with integer codes ``q`` in ``[qmin, qmax]``; ``zero``
is in code units and may be fractional (a float offset, as Q4_1's ``w = d*q + m`` is) or an integer (what
a kernel with integer zero points stores). Blocks are ``(N, nb, bs)``: rows, blocks along the input, block.
Searches weight each input position's squared error by ``importance`` (mean x^2 of that input channel on
calibration text, llama.cpp's imatrix weighting); None is plain MSE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SHRINKS = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.8)


def blocks_of(w: Tensor, bs: int) -> Tensor:
    """(N, K) -> (N, K/bs, bs)."""
    n, k = w.shape
    if k % bs:
        raise ValueError(f"K={k} is not a multiple of block size {bs}")
    return w.reshape(n, k // bs, bs)


def unblock(b: Tensor) -> Tensor:
    return b.reshape(b.shape[0], -1)


@dataclass
class Grid:
    scale: Tensor  # (N, nb, 1)
    zero: Tensor  # (N, nb, 1) in code units
    qmin: int
    qmax: int

    def codes(self, blocks: Tensor) -> Tensor:
        return (blocks / self.scale + self.zero).round().clamp(self.qmin, self.qmax)

    def integer_codes(self, blocks: Tensor) -> Tensor:
        """round(w / scale) + zero, for an integer zero point: what a kernel that adds its zero point after
        rounding stores (`codes` rounds w / scale + zero in one step, which can differ by one at a tie)."""
        return ((blocks / self.scale).round() + self.zero).clamp(self.qmin, self.qmax)

    def dequant(self, codes: Tensor) -> Tensor:
        return (codes - self.zero) * self.scale

    def with_scale(self, stored) -> "Grid":
        """The same range with the scale rounded as the kernel stores it (`stored`: Tensor -> Tensor, e.g. to
        fp16); the zero point follows the stored scale, so the block's offset in weight units stays."""
        scale = stored(self.scale)
        return Grid(scale, self.zero * self.scale / scale, self.qmin, self.qmax)

    def per_column(self, bs: int) -> tuple[Tensor, Tensor]:
        """(scale, zero) repeated to (N, K): what GPTQ's column loop reads."""
        return (self.scale.repeat_interleave(bs, dim=1).squeeze(-1), self.zero.repeat_interleave(bs, dim=1).squeeze(-1))

    def column_rounder(self, bs: int):
        """A GPTQ rounder for this grid: (j, col (N,)) -> (codes, dequantized)."""
        scale_k, zero_k = self.per_column(bs)

        def rnd(j: int, col: Tensor) -> tuple[Tensor, Tensor]:
            q = (col / scale_k[:, j] + zero_k[:, j]).round().clamp(self.qmin, self.qmax)
            return q, (q - zero_k[:, j]) * scale_k[:, j]
        return rnd


def affine_minmax(blocks: Tensor, bits: int, shrink: Tensor | float = 1.0, integer_zero: bool = False,
                  include_zero: bool = False, stored=None, zero_range: tuple[int, int] | None = None) -> Grid:
    """Codes 0..2^bits-1 spanning [min, max] of each block (shrunk toward 0 by `shrink`).

    integer_zero rounds the zero point to a code (kernels with uint zero points), clamped to `zero_range`
    (default [0, levels]; a kernel with a wider zero type may hold one outside the codes); include_zero
    widens the range to contain 0 first (needed for an integer zero point inside [0, levels]). `stored`
    rounds the scale as the kernel stores it (e.g. to fp16) before the zero point is derived from it."""
    levels = 2 ** bits - 1
    lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    if include_zero:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    lo, hi = lo * shrink, hi * shrink
    scale = ((hi - lo) / levels).clamp(min=1e-12)
    if stored is not None:
        scale = stored(scale)
    zero = -lo / scale
    if integer_zero:
        zero = zero.round().clamp(*(zero_range or (0, levels)))
    return Grid(scale, zero, 0, levels)


def _weighted_error(blocks: Tensor, grid: Grid, weight: Tensor) -> Tensor:
    return ((grid.dequant(grid.codes(blocks)) - blocks) ** 2 * weight).sum(-1, keepdim=True)


def _pick(best: Grid | None, best_err, cand: Grid, err):
    if best is None:
        return cand, err
    better = err < best_err
    return Grid(torch.where(better, cand.scale, best.scale), torch.where(better, cand.zero, best.zero),
                best.qmin, best.qmax), torch.minimum(err, best_err)


def importance_blocks(importance: Tensor | None, bs: int, like: Tensor) -> Tensor:
    """(K,) importance -> (1, nb, bs) weights broadcastable over blocks (ones when None)."""
    if importance is None:
        return torch.ones_like(like[:1])
    return importance.float().reshape(1, -1, bs)


SEARCH_CHUNK = 1 << 19  # weights per slice of rows: ~2 MB of fp32 stays in cache across a candidate's passes


def affine_search(blocks: Tensor, bits: int, importance: Tensor | None = None, integer_zero: bool = False,
                  shrinks=SHRINKS, refit: bool = True) -> Grid:
    """Per block, the affine grid with the least importance-weighted squared error.

    integer_zero (the ONNX ``mse`` grid): shrink [min, max] toward 0 and try the integer zero points
    either side of the exact one. Float zero: shrink the range about its centre, then (refit) solve the
    weighted least-squares scale and offset for the codes it gave and re-round once (llama.cpp's
    make_qkx2 idea); the best candidate per block wins.

    Rows are searched in slices of SEARCH_CHUNK weights on one thread: each block's choice is its own, so the
    result is the same, and the passes over a cache-sized slice beat whole-matrix passes on two threads
    (7M weights: 0.35 s vs 1.1-4.4 s on this 2-core machine under load, bit-identical grids)."""
    rows = max(1, SEARCH_CHUNK // max(1, blocks[0].numel()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = [_affine_search(blocks[i:i + rows], bits, importance, integer_zero, shrinks, refit)
                 for i in range(0, blocks.shape[0], rows)]
    finally:
        torch.set_num_threads(threads)
    if len(parts) == 1:
        return parts[0]
    return Grid(torch.cat([g.scale for g in parts]), torch.cat([g.zero for g in parts]), parts[0].qmin, parts[0].qmax)


def _affine_search(blocks: Tensor, bits: int, importance: Tensor | None, integer_zero: bool, shrinks,
                   refit: bool) -> Grid:
    weight = importance_blocks(importance, blocks.shape[-1], blocks)
    levels = 2 ** bits - 1
    best = best_err = None
    if integer_zero:
        for shrink in shrinks:
            g = affine_minmax(blocks, bits, shrink, include_zero=True)
            for zero in (g.zero.floor().clamp(0, levels), g.zero.ceil().clamp(0, levels)):
                cand = Grid(g.scale, zero, 0, levels)
                best, best_err = _pick(best, best_err, cand, _weighted_error(blocks, cand, weight))
        return best
    lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    for shrink in shrinks:
        a, b = mid - half * shrink, mid + half * shrink
        scale = ((b - a) / levels).clamp(min=1e-12)
        cand = Grid(scale, -a / scale, 0, levels)
        best, best_err = _pick(best, best_err, cand, _weighted_error(blocks, cand, weight))
        if refit:
            cand = _refit(blocks, cand, weight)
            best, best_err = _pick(best, best_err, cand, _weighted_error(blocks, cand, weight))
    return best


def _refit(blocks: Tensor, grid: Grid, weight: Tensor) -> Grid:
    """Weighted least squares ``w ≈ s*q + m`` for fixed codes q -> Grid(s, -m/s)."""
    q = grid.codes(blocks)
    w = weight.expand_as(blocks)
    sw, sq, sx = w.sum(-1, keepdim=True), (w * q).sum(-1, keepdim=True), (w * blocks).sum(-1, keepdim=True)
    sqq, sqx = (w * q * q).sum(-1, keepdim=True), (w * q * blocks).sum(-1, keepdim=True)
    det = sw * sqq - sq * sq
    ok = det.abs() > 1e-20
    s = torch.where(ok, (sw * sqx - sq * sx) / torch.where(ok, det, 1.0), grid.scale)
    m = torch.where(ok, (sx - s * sq) / sw.clamp(min=1e-30), -grid.zero * grid.scale)
    ok = ok & (s > 1e-12)
    s = torch.where(ok, s, grid.scale)
    zero = torch.where(ok, -m / s, grid.zero)
    return Grid(s, zero, grid.qmin, grid.qmax)


def round_bf16(x: Tensor) -> Tensor:
    return x.to(torch.bfloat16).float()


def symmetric_search(w: Tensor, bits: int, group_size: int, search: bool, bf16_scales: bool,
                     importance: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric codes: (q int8 [N, K], scale [N, n_groups]) minimizing (importance-weighted) squared error.

    Candidate scales are amax / qmax shrunk by up to 30% (clipping outliers trades a little range for a
    finer step); the scale is rounded like the kernel will store it before choosing."""
    out_f, in_f = w.shape
    g = in_f if group_size == 0 else group_size
    wg = w.reshape(out_f, in_f // g, g)  # (out, ng, g)
    weight = importance_blocks(importance, g, wg)
    qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    amax = wg.abs().amax(-1, keepdim=True).clamp(min=1e-12)
    factors = torch.linspace(0.7, 1.0, 16).tolist() if search else [1.0]
    best_q = best_s = best_err = None
    for f in factors:
        for base in ({qmax, -qmin} if bits == 4 else {qmax}):  # int4 may use -8 as the far end
            s = amax * f / base
            if bf16_scales:
                s = round_bf16(s)
            q = torch.round(wg / s).clamp(qmin, qmax)
            err = ((q * s - wg) ** 2 * weight).sum(-1, keepdim=True)
            if best_err is None:
                best_q, best_s, best_err = q, s, err
            else:
                better = err < best_err
                best_q, best_s = torch.where(better, q, best_q), torch.where(better, s, best_s)
                best_err = torch.minimum(err, best_err)
    return best_q.reshape(out_f, in_f).to(torch.int8), best_s.squeeze(-1)
