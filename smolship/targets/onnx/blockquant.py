"""Block-wise integer weight quantization in MatMulNBits' layout (pure torch, no ONNX).

A weight ``W (K, N)`` (ONNX MatMul layout) is cut into blocks of ``block_size`` along K for every
output column n. Each block stores a scale and, when asymmetric, an integer zero point:
``w ≈ scale * (q - zp)``, ``q`` in ``[0, 2**bits)``. MatMulNBits wants ``B (N, K/bs, bs*bits/8)``
uint8 (low nibble first), ``scales (N, K/bs)`` and 4-bit zero points packed two per byte.

Methods (chosen per recipe by measured kld_mean, see DESIGN notes in target.py):
* ``rtn`` - round to nearest on the block's [min, max] (asymmetric) or [-amax, amax] (symmetric);
* ``mse`` - asymmetric, per block search of the clipping range and zero point that minimise the
  squared error weighted by each input channel's mean squared activation (`importance`, measured
  on calibration text); with importance=None it is plain MSE;
* ``offset`` - a float zero point run on the integer kernel: ``w = scale * (q - zp) + r`` with an
  integer zp and a per-block offset r, carried by extra K blocks: the input gets its block sums
  appended (``x @ P``, P the block-indicator matrix) and the weight gets the rows r (see
  `quantize_offset`). MatMulNBits' float zero points are exact but run ~60x slower on CPU; this costs
  one extra block per row (+2-6% compute) and two small ops. The default model's weights are Q4_1
  (``w = d*q + m`` per block of 32), which this grid reproduces up to the 4-bit rounding of r.
* ``gptq`` - the ``mse`` grid, then GPTQ's column-by-column error feedback with the Hessian
  ``X^T X`` of the calibration activations (Frantar et al., 2022), which fixes up the rounding of
  the remaining columns of each block row.
* ``offset-search`` / ``offset-gptq`` - the ``offset`` layout with the float-zero grid chosen by an
  importance-weighted search (range shrink + least-squares refit), then rounded to nearest or by GPTQ:
  what holds on weights that are on no grid (the off-grid model, issue 19).
Grids and GPTQ are the shared core's (smolship/quant); this module only lays codes out for the kernel.
ONNX Runtime's HQQ quantizer writes float zero points, which MatMulNBits runs ~60x slower on CPU (no
int8 kernel for them: 947 us vs 14 us for one 576x1536 decode matmul, ORT 1.31), so it is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from smolship.quant.gptq import gptq
from smolship.quant.grids import Grid, affine_minmax, affine_search, blocks_of

METHODS = ("rtn", "mse", "gptq", "offset", "offset-search", "offset-gptq")


@dataclass(frozen=True)
class BlockQuant:
    bits: int = 4
    block_size: int = 32
    symmetric: bool = False
    method: str = "rtn"

    def __post_init__(self):
        if self.bits not in (4, 8) or self.method not in METHODS or self.block_size < 16:
            raise ValueError(f"unsupported block quantization {self}")

    @property
    def levels(self) -> int:
        return 2 ** self.bits - 1

    @property
    def offsets(self) -> bool:
        return self.method.startswith("offset")

    @property
    def needs(self) -> tuple[bool, bool]:
        """(importance, hessian) this method reads from calibration."""
        if self.symmetric or self.method in ("rtn", "offset"):
            return False, False
        return True, self.method.endswith("gptq")


@dataclass
class Quantized:
    """MatMulNBits tensors for one weight; `dequant` (K, N) float32 is what the runtime computes."""

    packed: np.ndarray  # (N, kb, bs*bits/8) uint8
    scales: np.ndarray  # (N, kb) float32
    zero_points: np.ndarray | None  # packed uint8 or None (symmetric: the kernel's default 2**(bits-1))
    q: torch.Tensor  # (N, kb, bs) uint8 codes, kept for reuse
    zp: torch.Tensor  # (N, kb, 1) float codes


def _symmetric(blocks: torch.Tensor, bits: int) -> Grid:
    half = 2 ** (bits - 1)
    scale = (blocks.abs().amax(-1, keepdim=True) / (half - 1)).clamp(min=1e-12)
    return Grid(scale, torch.full_like(scale, float(half)), 0, 2 * half - 1)


def grid_and_codes(w: torch.Tensor, cfg: BlockQuant, importance: torch.Tensor | None = None,
                   hessian: torch.Tensor | None = None) -> tuple[Grid, torch.Tensor]:
    """W (N, K) -> (grid, codes (N, kb, bs)) by `cfg.method` (float zero points for the offset methods)."""
    blocks = blocks_of(w, cfg.block_size)
    if cfg.symmetric:
        grid = _symmetric(blocks, cfg.bits)
    elif cfg.method == "rtn":
        grid = affine_minmax(blocks, cfg.bits, integer_zero=True, include_zero=True)
    elif cfg.method == "offset":
        grid = affine_minmax(blocks, cfg.bits)
    else:
        grid = affine_search(blocks, cfg.bits, importance, integer_zero=not cfg.offsets)
    if cfg.method.endswith("gptq") and hessian is not None:
        codes = gptq(w, hessian, grid.column_rounder(cfg.block_size)).reshape(blocks.shape)
    else:
        codes = grid.codes(blocks)
    return grid, codes


def quantize_weight(w: np.ndarray | torch.Tensor, cfg: BlockQuant, importance: torch.Tensor | None = None,
                    hessian: torch.Tensor | None = None) -> Quantized:
    """Quantize W (K, N) with integer zero points; `importance` (K,) weights the error, `hessian` (K, K) enables GPTQ."""
    if cfg.offsets:
        raise ValueError("offset methods need quantize_offset (an extra input block)")
    w = torch.as_tensor(np.asarray(w, dtype=np.float32)).t()  # (N, K)
    grid, codes = grid_and_codes(w, cfg, importance, hessian)
    return _pack(codes, grid.scale, grid.zero, cfg)


def _pack(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, cfg: BlockQuant) -> Quantized:
    n, kb, _ = q.shape
    qu8 = q.to(torch.uint8)
    if cfg.bits == 4:
        packed = (qu8[..., 0::2] | (qu8[..., 1::2] << 4)).numpy()
    else:
        packed = qu8.numpy()
    zero_points = None
    if not cfg.symmetric:
        z = zp.reshape(n, kb).to(torch.uint8)
        if cfg.bits == 4:
            if kb % 2:
                z = torch.cat([z, torch.zeros(n, 1, dtype=torch.uint8)], dim=1)
            z = z[:, 0::2] | (z[:, 1::2] << 4)
        zero_points = z.numpy()
    return Quantized(packed, scale.reshape(n, kb).float().numpy(), zero_points, q, zp)


def quantize_offset(w: np.ndarray | torch.Tensor, cfg: BlockQuant, importance: torch.Tensor | None = None,
                    hessian: torch.Tensor | None = None) -> tuple[Quantized, np.ndarray]:
    """W (K, N) -> (quantized W' (K + E, N), P (K, E)) with x @ W ≈ concat(x, x @ P) @ W'.

    E = block_size * ceil((K / block_size) / block_size): the per-block offsets of one column fill
    E extra rows, themselves quantized in blocks like any other rows.
    """
    w = torch.as_tensor(np.asarray(w, dtype=np.float32))
    k, n = w.shape
    bs = cfg.block_size
    kb = k // bs
    extra = -(-kb // bs) * bs  # E
    grid, q = grid_and_codes(w.t(), cfg, importance, hessian)
    scale, fzp = grid.scale, grid.zero  # (N, kb, 1); fzp is the exact (float) zero point
    zp = fzp.round().clamp(0, cfg.levels)
    r_rows = torch.zeros(n, extra)
    r_rows[:, :kb] = (scale * (zp - fzp)).reshape(n, kb)  # w = scale * (q - zp) + r
    r_rows = r_rows.reshape(n, extra // bs, bs)
    r_grid = affine_minmax(r_rows, cfg.bits, integer_zero=True, include_zero=True)
    r_q = r_grid.codes(r_rows)
    packed = _pack(torch.cat([q, r_q], 1), torch.cat([scale, r_grid.scale], 1), torch.cat([zp, r_grid.zero], 1), cfg)
    p = np.zeros((k, extra), dtype=np.float32)
    p[np.arange(k), np.arange(k) // bs] = 1.0
    return packed, p


def quantize_matrix(w: np.ndarray, cfg: BlockQuant, importance: torch.Tensor | None = None,
                    hessian: torch.Tensor | None = None) -> tuple[Quantized, np.ndarray | None, np.ndarray]:
    """W (K, N) -> (its MatMulNBits tensors, the block-sum matrix P of offset methods or None, the (K, N) weight
    the kernel computes: x @ that == concat(x, x @ P) @ dequantize(tensors))."""
    if cfg.offsets:
        qz, p = quantize_offset(w, cfg, importance=importance, hessian=hessian)
        d = dequantize(qz)
        return qz, p, d[:d.shape[0] - p.shape[1]] + p @ d[d.shape[0] - p.shape[1]:]
    qz = quantize_weight(w, cfg, importance=importance, hessian=hessian)
    return qz, None, dequantize(qz)


def dequantize(qz: Quantized) -> np.ndarray:
    """The (K, N) float32 weight MatMulNBits computes with (for error checks)."""
    scale = torch.as_tensor(qz.scales)[..., None]
    w = (qz.q.float() - qz.zp.float()) * scale  # (N, kb, bs)
    return w.reshape(w.shape[0], -1).t().numpy()
