"""Weight compression plans for the Core ML recipes, applied to the converted MIL program.

A `Plan` says how each class of weight is stored: the ``linear`` weights inside the decoder layers,
and the ``embedding`` (the token embedding, which is also the lm_head when tied, or the untied
lm_head). Norm weights, RoPE tables and the converter's zero biases are never touched.

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
* `Palette` - ``coremltools.optimize``'s k-means palettizer, one LUT per group of output channels
  -> ``constexpr_lut_to_dense``. Slow (k-means per group), so it runs in chunks that report progress.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from smolship.targets.base import Progress, no_progress
from smolship.targets.coreml.naming import EMBEDDING, LINEAR, compressible


@dataclass(frozen=True)
class Affine:
    bits: int  # 4 or 8
    block: int | None  # along the input axis; None = one scale per output channel
    symmetric: bool = True

    def describe(self) -> str:
        gran = f"per-block {self.block}" if self.block else "per-channel"
        return f"{'' if self.symmetric else 'u'}int{self.bits} {gran}{'' if self.symmetric else ' + fp16 offset'}"


@dataclass(frozen=True)
class Palette:
    bits: int = 4
    group_size: int = 16  # output channels sharing one look-up table

    def describe(self) -> str:
        return f"{self.bits}-bit k-means palette per {self.group_size} channels"


Scheme = Affine | Palette | None  # None = fp16


@dataclass(frozen=True)
class Plan:
    linear: Scheme
    embedding: Scheme

    def scheme(self, cls: str) -> Scheme:
        return {LINEAR: self.linear, EMBEDDING: self.embedding}[cls]

    def without_embedding(self) -> "Plan":
        return Plan(self.linear, None)


EMBED_8BIT = Affine(8, 32)  # the tied embedding/lm_head is the most sensitive tensor: 8 bits, fine blocks
PLANS: dict[str, Plan] = {
    "fp16": Plan(None, None),
    "w8": Plan(Affine(8, None), EMBED_8BIT),
    "w4": Plan(Affine(4, 32, symmetric=False), EMBED_8BIT),
    "pal4": Plan(Palette(4, 16), EMBED_8BIT),
}


# --- asymmetric per-block uint4 with fp16 offsets ---------------------------------------------------
def asymmetric_blocks(w: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q uint8 [O, I], scale fp16 [O, I/block], offset fp16 [O, I/block]) with w ~ scale * (q - offset)."""
    o, i = w.shape
    if i % block:
        raise ValueError(f"input width {i} is not a multiple of the block size {block}")
    levels = (1 << bits) - 1
    b = w.astype(np.float32).reshape(o, i // block, block)  # (O, nb, block)
    lo, hi = b.min(-1), b.max(-1)  # (O, nb)
    scale = ((hi - lo) / levels).astype(np.float16)
    scale[scale == 0] = np.float16(1.0)  # constant block: any scale, q = offset reproduces it
    s32 = scale.astype(np.float32)
    offset = (-lo / s32).astype(np.float16)
    q = np.clip(np.rint(b / s32[..., None] + offset.astype(np.float32)[..., None]), 0, levels)
    return q.reshape(o, i).astype(np.uint8), scale, offset


def _asymmetric_pass(names: dict[str, str], scheme: Affine):
    """A MIL graph pass that replaces the named const ops with uint4/uint8 + fp16-offset constexprs."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.types.type_int import np_uint4_dtype

    dtype = np_uint4_dtype if scheme.bits == 4 else np.uint8

    class AsymmetricBlockwise(AbstractGraphPass):
        def apply(self, prog):
            for op in list(prog.functions["main"].operations):
                if op.op_type != "const" or op.name not in names:
                    continue
                q, scale, offset = asymmetric_blocks(op.outputs[0].val, scheme.bits, scheme.block)
                with prog.functions["main"]:
                    new = mb.constexpr_blockwise_shift_scale(data=q.astype(dtype), scale=scale, offset=offset,
                                                              before_op=op, name=op.name + "_quantized")
                op.enclosing_block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0],
                                                               new_var=new, force_replace=True)
                op.enclosing_block.remove_ops([op])

    return AsymmetricBlockwise()


# --- coremltools.optimize passes ------------------------------------------------------------------
def _op_config(scheme):
    import coremltools.optimize as cto

    if isinstance(scheme, Palette):
        return cto.coreml.OpPalettizerConfig(mode="kmeans", nbits=scheme.bits, granularity="per_grouped_channel",
                                             group_size=scheme.group_size, weight_threshold=1)
    return cto.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype=f"int{scheme.bits}", weight_threshold=1,
        granularity="per_block" if scheme.block else "per_channel", block_size=scheme.block or 32)


def _library_pass(kind: str, configs: dict):
    import coremltools.optimize as cto
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    graph_pass = PASS_REGISTRY[f"compression::{kind}"]
    graph_pass.set_options([PassOption("config", cto.coreml.OptimizationConfig(op_name_configs=configs))])
    return graph_pass


class _Chunked:
    """Run a slow library pass over a few weights at a time so progress (and time) can be shown."""

    def __init__(self, kind: str, configs: dict, progress: Progress, label: str, chunks: int = 20):
        self.kind, self.configs, self.progress, self.label, self.chunks = kind, configs, progress, label, chunks

    def apply(self, prog):
        items = list(self.configs.items())
        step = max(1, -(-len(items) // self.chunks))
        t0 = time.perf_counter()
        for start in range(0, len(items), step):
            _library_pass(self.kind, dict(items[start:start + step])).apply(prog)
            done = min(start + step, len(items))
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * (len(items) - done)
            self.progress(f"{self.label}: {done}/{len(items)} weights, {elapsed:.0f} s (about {eta:.0f} s left)",
                          done / len(items))


def compress(mlmodel, params, plan: Plan, progress: Progress = no_progress):
    """Apply `plan` to a converted fp16 MLModel holding `params` (state-dict names).

    Returns (new MLModel, {param: scheme text}) for the weights it compressed."""
    from coremltools.models.utils import _apply_graph_pass

    spec = mlmodel.get_spec()
    consts = compressible(params)  # {mil const name: (param, class)}
    groups: dict[Scheme, dict[str, str]] = {}
    for mil_name, (_param, cls) in consts.items():
        scheme = plan.scheme(cls)
        if scheme is not None:
            groups.setdefault(scheme, {})[mil_name] = cls
    if not groups:
        return mlmodel, {}
    passes = []
    for scheme, names in groups.items():
        if isinstance(scheme, Affine) and not scheme.symmetric:
            passes.append(_asymmetric_pass(names, scheme))
        elif isinstance(scheme, Palette):
            configs = {n: _op_config(scheme) for n in names}
            passes.append(_ChunkedPass(_Chunked("palettize_weights", configs, progress, f"palettizing ({scheme.describe()})")))
        else:
            passes.append(_library_pass("linear_quantize_weights", {n: _op_config(scheme) for n in names}))
    out = _apply_graph_pass(mlmodel, passes, spec_version=spec.specificationVersion, skip_model_load=True)
    applied = {consts[n][0]: s.describe() for s, names in groups.items() for n in names}
    return out, applied


def _ChunkedPass(chunked: _Chunked):
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass

    class ChunkedPass(AbstractGraphPass):
        def apply(self, prog):
            chunked.apply(prog)

    return ChunkedPass()
