"""Packing: a recipe's `Plan` (recipes.py) applied to the converted MIL program as compression passes.

Three storage schemes, all iOS18 constexpr ops that Core ML dequantizes on device:

* `Affine(symmetric=True)` - ``coremltools.optimize``'s linear quantizer (int8/int4, per output
  channel or per block along the input axis) -> ``constexpr_blockwise_shift_scale``.
* `Affine(symmetric=False)` - asymmetric per-block uint4 with an fp16 offset:
  ``w = scale * (q - offset)``, scale = (max - min) / 15 and offset = -min / scale per block.
  coremltools' own asymmetric mode rounds the offset to an integer (its grid is anchored at 0), so
  weights that already sit on a per-block min/max grid - the default model came from a Q4_1 GGUF,
  blocks of 32 along the input axis - move by up to half a step; the float offset (allowed by the
  op: OffsetT may be fp16) reproduces that grid to fp16 precision. Measured on the real 135M:
  top-1 0.69 with integer zero points, 0.999 with float offsets.
* `Palette` - ``coremltools.optimize``'s palettizer, one 16-entry LUT per group of output channels
  -> ``constexpr_lut_to_dense``. The LUT is optimal 1-D k-means (the kmeans1d that coremltools
  vendors and itself uses for large fp16 groups) passed as its ``lut_function``: its default picks
  scikit-learn's k-means for groups under 10,000 weights (16 x 576 here), ~4x slower and never
  better. Still minutes for 135M, so it runs in chunks that report progress and time.
"""

from __future__ import annotations

import time
from dataclasses import replace

import coremltools.optimize as cto
import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil.passes.graph_pass import (
    AbstractGraphPass,
    PassOption,
)
from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
from coremltools.converters.mil.mil.types.type_int import np_uint4_dtype
from coremltools.models.utils import _apply_graph_pass

from smolship.errors import SmolshipError
from smolship.targets.base import Progress, no_progress
from smolship.targets.coreml.naming import compressible
from smolship.targets.coreml.recipes import Affine, Palette, Plan


# --- asymmetric per-block uint4 with fp16 offsets ---------------------------------------------------
def asymmetric_blocks(w: np.ndarray, bits: int, block: int, search: bool = False,
                      importance=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q uint8 [O, I], scale fp16 [O, I/block], offset fp16 [O, I/block]) with w ~ scale * (q - offset).

    The grid is the shared core's (smolship.quant.grids): min/max, or with `search` the best range per
    block, its squared error weighted by `importance` (I,) when given (mean x^2 of each input channel
    on calibration text); min/max is one candidate, so weights already on such a grid keep it."""
    import torch

    from smolship.quant.grids import affine_minmax, affine_search

    def fp16_scale(scale):  # as stored; a constant block's zero scale becomes 1 (q = offset reproduces it)
        scale = scale.half().float()
        return torch.where(scale == 0, torch.ones_like(scale), scale)

    o, i = w.shape
    if i % block:
        raise ValueError(f"input width {i} is not a multiple of the block size {block}")
    tb = torch.from_numpy(w.astype(np.float32).reshape(o, i // block, block))  # (O, nb, block)
    grid = affine_search(tb, bits, importance).with_scale(fp16_scale) if search else affine_minmax(tb, bits, stored=fp16_scale)
    grid = replace(grid, zero=grid.zero.half().float())  # the offset as stored: codes are rounded for it
    q = grid.codes(tb).reshape(o, i).numpy().astype(np.uint8)
    return q, grid.scale[..., 0].numpy().astype(np.float16), grid.zero[..., 0].numpy().astype(np.float16)


class AsymmetricBlockwise(AbstractGraphPass):
    """Replace the named const ops by ``constexpr_blockwise_shift_scale`` with uint4/uint8 data and fp16 offsets."""

    def __init__(self, names, scheme: Affine, importance: dict | None = None):
        super().__init__()
        self.names, self.scheme, self.importance = set(names), scheme, importance or {}

    def apply(self, prog):
        dtype = np_uint4_dtype if self.scheme.bits == 4 else np.uint8
        main = prog.functions["main"]
        for op in list(main.operations):
            if op.op_type != "const" or op.name not in self.names:
                continue
            w = op.outputs[0].val
            if w.shape[-1] % self.scheme.block:
                raise SmolshipError(f"Weight '{op.name}' is {w.shape[-1]} wide, not a multiple of the "
                                    f"{self.scheme.block}-wide blocks of this recipe.", "Use the w8 or fp16 recipe for this model.")
            q, scale, offset = asymmetric_blocks(w, self.scheme.bits, self.scheme.block, self.scheme.search,
                                                 self.importance.get(op.name))
            with main:
                new = mb.constexpr_blockwise_shift_scale(data=q.astype(dtype), scale=scale, offset=offset,
                                                          before_op=op, name=op.name + "_quantized")
            op.enclosing_block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=new,
                                                           force_replace=True)
            op.enclosing_block.remove_ops([op])


# --- coremltools.optimize passes ------------------------------------------------------------------
class OptimalLut:
    """lut_function for one channel group: optimal 1-D k-means over its (count-weighted) unique values."""

    def __init__(self, bits: int):
        from coremltools._deps import kmeans1d

        self.bits, self.kmeans1d = bits, kmeans1d

    def __call__(self, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, inverse, counts = np.unique(val.reshape(-1), return_inverse=True, return_counts=True)
        k = min(len(values), 1 << self.bits)
        result = self.kmeans1d.cluster(values, k, weights=counts)
        lut = np.zeros(1 << self.bits, dtype=val.dtype)
        lut[:k] = result.centroids
        return lut, np.asarray(result.clusters, dtype=np.uint8)[inverse.reshape(-1)]


def op_config(scheme: Affine | Palette):
    """coremltools' config for a symmetric Affine or a Palette (weight_threshold 1: every named weight)."""
    if isinstance(scheme, Palette):
        try:
            lut = {"mode": "custom", "lut_function": OptimalLut(scheme.bits)}
        except ImportError:  # coremltools without its vendored kmeans1d: its own k-means
            lut = {"mode": "kmeans", "nbits": scheme.bits}
        return cto.coreml.OpPalettizerConfig(**lut, granularity="per_grouped_channel",
                                             group_size=scheme.group_size, weight_threshold=1)
    return cto.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype=f"int{scheme.bits}", weight_threshold=1,
        granularity="per_block" if scheme.block else "per_channel", block_size=scheme.block or 32)


def library_pass(kind: str, configs: dict) -> AbstractGraphPass:
    """coremltools' own compression pass (what ct.optimize.coreml.<kind> runs), limited to `configs`."""
    graph_pass = PASS_REGISTRY[f"compression::{kind}"]  # a fresh instance
    graph_pass.set_options([PassOption("config", cto.coreml.OptimizationConfig(op_name_configs=configs))])
    return graph_pass


class Chunked(AbstractGraphPass):
    """A slow library pass run over a few weights at a time, reporting progress and time as it goes."""

    def __init__(self, kind: str, configs: dict, progress: Progress, label: str, chunks: int = 20):
        super().__init__()
        self.kind, self.configs, self.progress, self.label, self.chunks = kind, configs, progress, label, chunks

    def apply(self, prog):
        items = list(self.configs.items())
        step = max(1, -(-len(items) // self.chunks))
        t0 = time.perf_counter()
        for start in range(0, len(items), step):
            library_pass(self.kind, dict(items[start:start + step])).apply(prog)
            done = min(start + step, len(items))
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * (len(items) - done)
            self.progress(f"{self.label}: {done}/{len(items)} weights, {elapsed:.0f} s (about {eta:.0f} s left)",
                          done / len(items))


def compress(mlmodel, params, plan: Plan, progress: Progress = no_progress, importance: dict | None = None):
    """Apply `plan` to a converted fp16 MLModel holding `params` (state-dict names); `importance`
    ({param: (I,) tensor}) weights the searched 4-bit grids.

    Returns (new MLModel, {param: scheme text}) for the weights it compressed."""
    consts = compressible(params)  # {mil const name: (param, class)}
    chosen = {name: s for name, (p, cls) in consts.items() if (s := plan.scheme_for(p, cls)) is not None}
    if not chosen:
        return mlmodel, {}
    passes: list[AbstractGraphPass] = []
    for scheme in dict.fromkeys(s for s in chosen.values() if isinstance(s, Affine) and not s.symmetric):
        names = [n for n, s in chosen.items() if s == scheme]
        by_op = {n: importance[consts[n][0]] for n in names if importance and consts[n][0] in importance}
        passes.append(AsymmetricBlockwise(names, scheme, by_op))
    linear = {n: op_config(s) for n, s in chosen.items() if isinstance(s, Affine) and s.symmetric}
    if linear:
        passes.append(library_pass("linear_quantize_weights", linear))
    palette_configs = {s: op_config(s) for s in set(chosen.values()) if isinstance(s, Palette)}  # one per scheme
    palette = {n: palette_configs[s] for n, s in chosen.items() if isinstance(s, Palette)}
    if palette:
        label = f"palettizing ({', '.join(sorted({s.describe() for s in chosen.values() if isinstance(s, Palette)}))})"
        passes.append(Chunked("palettize_weights", palette, progress, label))
    spec_version = mlmodel.get_spec().specificationVersion
    out = _apply_graph_pass(mlmodel, passes, spec_version=spec_version, skip_model_load=True)
    return out, {consts[n][0]: s.describe() for n, s in chosen.items()}
