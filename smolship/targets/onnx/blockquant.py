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
ONNX Runtime's HQQ quantizer writes float zero points, which MatMulNBits runs ~60x slower on CPU (no
int8 kernel for them: 947 us vs 14 us for one 576x1536 decode matmul, ORT 1.31), so it is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

METHODS = ("rtn", "mse", "gptq", "offset")


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


@dataclass
class Quantized:
    """MatMulNBits tensors for one weight; `dequant` (K, N) float32 is what the runtime computes."""

    packed: np.ndarray  # (N, kb, bs*bits/8) uint8
    scales: np.ndarray  # (N, kb) float32
    zero_points: np.ndarray | None  # packed uint8 or None (symmetric: the kernel's default 2**(bits-1))
    q: torch.Tensor  # (N, kb, bs) uint8 codes, kept for reuse
    zp: torch.Tensor  # (N, kb, 1) float codes


def _blocks(w: torch.Tensor, bs: int) -> torch.Tensor:
    k, n = w.shape
    if k % bs:
        raise ValueError(f"K={k} is not a multiple of block_size {bs}")
    return w.t().reshape(n, k // bs, bs)  # (N, kb, bs)


def _grid(blocks: torch.Tensor, cfg: BlockQuant, shrink: torch.Tensor | float = 1.0):
    """scale, zero point (float codes) for blocks (N, kb, bs) and a range shrink factor."""
    if cfg.symmetric:
        half = 2 ** (cfg.bits - 1)
        amax = blocks.abs().amax(-1, keepdim=True) * shrink
        scale = (amax / (half - 1)).clamp(min=1e-12)
        return scale, torch.full_like(scale, float(half))
    lo = blocks.amin(-1, keepdim=True).clamp(max=0) * shrink
    hi = blocks.amax(-1, keepdim=True).clamp(min=0) * shrink
    scale = ((hi - lo) / cfg.levels).clamp(min=1e-12)
    zp = (-lo / scale).round().clamp(0, cfg.levels)
    return scale, zp


def _codes(blocks, scale, zp, levels):
    return (blocks / scale + zp).round().clamp(0, levels)


def quantize_weight(w: np.ndarray | torch.Tensor, cfg: BlockQuant, importance: torch.Tensor | None = None,
                    hessian: torch.Tensor | None = None) -> Quantized:
    """Quantize W (K, N); `importance` (K,) weights the error, `hessian` (K, K) enables GPTQ."""
    w = torch.as_tensor(np.asarray(w, dtype=np.float32))
    blocks = _blocks(w, cfg.block_size)
    if cfg.method == "rtn" or cfg.symmetric:
        scale, zp = _grid(blocks, cfg)
    else:
        imp = None if importance is None else _blocks(importance[:, None].expand(-1, 1), cfg.block_size)[0]
        scale, zp = _search_grid(blocks, cfg, imp)
    if cfg.method == "gptq" and hessian is not None:
        q = _gptq_codes(w, scale, zp, cfg, hessian)
    else:
        q = _codes(blocks, scale, zp, cfg.levels)
    return _pack(q, scale, zp, cfg)


def _search_grid(blocks: torch.Tensor, cfg: BlockQuant, imp: torch.Tensor | None):
    """Per block: the shrink of [min, max] and zero-point nudge (-1, 0, +1) with the least weighted error."""
    weight = torch.ones_like(blocks[:1, :1]) if imp is None else imp[None]  # (1, kb, bs) or broadcastable
    best_err = best_scale = best_zp = None
    for shrink in (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.8):
        scale, _ = _grid(blocks, cfg, shrink)
        lo = blocks.amin(-1, keepdim=True).clamp(max=0) * shrink
        zf = -lo / scale  # exact float zero point; try the integers around it
        for zp in (zf.floor().clamp(0, cfg.levels), zf.ceil().clamp(0, cfg.levels)):
            deq = (_codes(blocks, scale, zp, cfg.levels) - zp) * scale
            err = ((deq - blocks) ** 2 * weight).sum(-1, keepdim=True)
            if best_err is None:
                best_err, best_scale, best_zp = err, scale, zp
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_scale = torch.where(better, scale, best_scale)
                best_zp = torch.where(better, zp, best_zp)
    return best_scale, best_zp


def _gptq_codes(w: torch.Tensor, scale, zp, cfg: BlockQuant, hessian: torch.Tensor,
                damp: float = 0.01, batch: int = 128) -> torch.Tensor:
    """GPTQ over the input dimension with a fixed per-block grid (lazy batch updates); codes (N, kb, bs)."""
    k, n = w.shape
    bs = cfg.block_size
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()  # (K, K)
    wt = w.t().clone()  # (N, K): columns are quantized in input order, the rest absorb their error
    scale_k = scale.repeat_interleave(bs, dim=1).squeeze(-1)  # (N, K)
    zp_k = zp.repeat_interleave(bs, dim=1).squeeze(-1)
    codes = torch.empty(n, k)
    for i1 in range(0, k, batch):
        i2 = min(i1 + batch, k)
        w1, h1 = wt[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col, j = w1[:, i], i1 + i
            qj = (col / scale_k[:, j] + zp_k[:, j]).round().clamp(0, cfg.levels)
            codes[:, j] = qj
            e = (col - (qj - zp_k[:, j]) * scale_k[:, j]) / h1[i, i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            err1[:, i] = e
        wt[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return codes.reshape(n, k // bs, bs)


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


def quantize_offset(w: np.ndarray | torch.Tensor, cfg: BlockQuant) -> tuple[Quantized, np.ndarray]:
    """W (K, N) -> (quantized W' (K + E, N), P (K, E)) with x @ W ≈ concat(x, x @ P) @ W'.

    E = block_size * ceil((K / block_size) / block_size): the per-block offsets of one column fill
    E extra rows, themselves quantized in blocks like any other rows.
    """
    w = torch.as_tensor(np.asarray(w, dtype=np.float32))
    k, n = w.shape
    bs = cfg.block_size
    kb = k // bs
    extra = -(-kb // bs) * bs  # E
    blocks = _blocks(w, bs)  # (N, kb, bs)
    lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
    scale = ((hi - lo) / cfg.levels).clamp(min=1e-12)
    fzp = -lo / scale  # the exact (float) zero point
    zp = fzp.round().clamp(0, cfg.levels)
    q = _codes(blocks, scale, fzp, cfg.levels)
    r_rows = torch.zeros(n, extra)
    r_rows[:, :kb] = (scale * (zp - fzp)).reshape(n, kb)  # w = scale * (q - zp) + r
    r_rows = r_rows.reshape(n, extra // bs, bs)
    r_scale, r_zp = _grid(r_rows, BlockQuant(cfg.bits, bs, False, "rtn"))
    r_q = _codes(r_rows, r_scale, r_zp, cfg.levels)
    packed = _pack(torch.cat([q, r_q], 1), torch.cat([scale, r_scale], 1), torch.cat([zp, r_zp], 1), cfg)
    p = np.zeros((k, extra), dtype=np.float32)
    p[np.arange(k), np.arange(k) // bs] = 1.0
    return packed, p


def dequantize(qz: Quantized) -> np.ndarray:
    """The (K, N) float32 weight MatMulNBits computes with (for error checks)."""
    scale = torch.as_tensor(qz.scales)[..., None]
    w = (qz.q.float() - qz.zp.float()) * scale  # (N, kb, bs)
    return w.reshape(w.shape[0], -1).t().numpy()
