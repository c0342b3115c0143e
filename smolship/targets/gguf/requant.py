"""Re-quantize a tensor that the source GGUF already stores on a 32-block 4/5-bit grid, onto that grid.

Exact where the target can hold the source's levels: a 4-bit block ``d*q + m`` is the 5-bit block with
step ``d/2``, offset ``m`` and levels ``2q`` (Q4_1 -> Q5_1, Q4_0 -> Q5_0), so those are lossless.
Plain rounding instead (llama.cpp's reference quantizers) spreads 31 steps over the block's range and
misses the source's 16 levels: on the 135M, q5_1 by rounding is at kld_mean 0.137, on the grid 0.0034.

Q8_0:
Re-quantizing a Q4_1 tensor to Q8_0 by plain rounding (scale = max|x| / 127) adds error: the source's
16 levels ``d*q + m`` do not land on the new grid. But both formats use the same 32-value blocks, so
each Q8_0 block can pick its scale from the source block's own step: with ``d' = d / j`` the levels
become ``j*q + m/d'`` and only the offset ``m/d'`` has to round. Trying j = 1..15 (as far as the
int8 range allows) and keeping, per block, whichever of these and the plain rounding is closest cuts
the squared weight error about six-fold on the 135M; Q4_0/Q5_0 sources (m = -8d / -16d) become exact.
The results are ordinary Q8_0 / Q5_x tensors: any llama.cpp reads them.
"""

from __future__ import annotations

import numpy as np

QK = 32
# source type -> (bytes per block, has its own min m, zero point for symmetric types)
GRID_TYPES = {"Q4_0": (18, False, 8), "Q4_1": (20, True, 0), "Q5_0": (22, False, 16), "Q5_1": (24, True, 0)}
MAX_J = 15
EXACT = {("Q4_1", "Q5_1"), ("Q4_0", "Q5_0")}  # (source, target) pairs re-encoded without loss


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def grid_params(raw: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-block step d and offset m (fp32) of a raw 32-block tensor: value = d*q + m."""
    size, has_min, zero = GRID_TYPES[type_name]
    blocks = np.ascontiguousarray(raw).reshape(-1, size)
    d = blocks[:, 0:2].copy().view(np.float16)[:, 0].astype(np.float32)
    m = blocks[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float32) if has_min else -zero * d
    return d, m


def q8_0_on_grid(values: np.ndarray, raw: np.ndarray, type_name: str) -> np.ndarray:
    """Q8_0 bytes (rows, cols/32*34) for `values` (rows, cols; the source tensor dequantized)."""
    import gguf

    rows, cols = values.shape
    values = np.ascontiguousarray(values, dtype=np.float32)
    v = values.reshape(-1, QK)  # (blocks, 32)
    out = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0).reshape(-1, 2 + QK)  # llama.cpp's rounding
    base = out[:, 2:].view(np.int8).astype(np.float32) * out[:, :2].copy().view(np.float16).astype(np.float32)
    err = ((base - v) ** 2).sum(1)
    d, m = grid_params(raw, type_name)
    d = np.abs(d)  # llama.cpp's Q4_0/Q5_0 store a signed step; the levels are |d| apart either way
    # grid candidates d' = d/j: the error of source level q is q*a + b, a = j*d' - d, b = round(m/d')*d' - m;
    # ranked assuming the levels are spread evenly (sum q, sum q^2 of 32 values); checked exactly below
    qmax = float(2 ** (4 if type_name.startswith("Q4") else 5) - 1)
    s1, s2 = QK * qmax / 2, QK * qmax * (2 * qmax + 1) / 6
    best_j, best_e = np.zeros(len(d), dtype=np.int64), err.copy()
    for j in range(1, MAX_J + 1):
        dj = _f16(d / j)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.round(np.where(dj > 0, m / dj, 0))
        a, b = j * dj - d, r * dj - m
        e = a * a * s2 + 2 * a * b * s1 + QK * b * b
        fits = (dj > 0) & (np.abs(r) <= 127) & (np.abs(r + j * qmax) <= 127)
        better = fits & (e < best_e)
        best_j[better], best_e[better] = j, e[better]
    idx = np.flatnonzero(best_j)
    if idx.size:  # exact check of each chosen grid scale against plain rounding
        dj = _f16(d[idx] / best_j[idx])
        k = np.clip(np.round(v[idx] / dj[:, None]), -127, 127)
        keep = ((k * dj[:, None] - v[idx]) ** 2).sum(1) < err[idx]
        idx, dj, k = idx[keep], dj[keep], k[keep]
        out[idx, :2] = dj.astype(np.float16).reshape(-1, 1).view(np.uint8)
        out[idx, 2:] = k.astype(np.int8).view(np.uint8)
    return out.reshape(rows, cols // QK * (2 + QK))


def q5_exact(values: np.ndarray, raw: np.ndarray, src_type: str, dst_type: str) -> np.ndarray:
    """Q5_1 (from Q4_1) or Q5_0 (from Q4_0) bytes holding exactly the source's values: step d/2, levels 2q."""
    rows, cols = values.shape
    v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, QK)
    d, m = grid_params(raw, src_type)
    q = np.round((v - m[:, None]) / np.where(d != 0, d, 1)[:, None]).clip(0, 15).astype(np.uint8)  # d < 0 in Q4_0
    k = 2 * q  # (blocks, 32) 5-bit levels
    qs = (k[:, :16] & 0x0F) | ((k[:, 16:] & 0x0F) << 4)
    qh = np.packbits((k >> 4).reshape(-1, 1, QK), axis=-1, bitorder="little").reshape(-1, 4)
    head = [(d / 2).astype(np.float16).reshape(-1, 1).view(np.uint8)]
    if dst_type == "Q5_1":
        head.append(m.astype(np.float16).reshape(-1, 1).view(np.uint8))
    out = np.concatenate([*head, qh, qs], axis=1)
    return out.reshape(rows, -1)
