"""Which weights exist in the Core ML program, under which names, and which compression class each is in.

coremltools' torch frontend names each parameter's const after its module path in the wrapper
(`StatefulLlama.model.<param>`), dots replaced by underscores, with ``_to_fp16`` appended by the
fp16 pass; compression passes append their own suffix (``_quantized``, ``_palettized``).
The tied embedding is one const that feeds both the ``gather`` (embedding) and the lm_head ``linear``.
"""

from __future__ import annotations

LINEAR = "linear"  # q/k/v/o and gate/up/down projections inside the decoder layers
EMBEDDING = "embedding"  # token embedding and lm_head (tied or not): kept at 8 bits in 4-bit recipes
FP16_SUFFIX = "_to_fp16"
COMPRESSION_SUFFIXES = ("_quantized", "_palettized_pcs", "_palettized")


def weight_class(param: str) -> str | None:
    """LINEAR, EMBEDDING, or None for tensors that are never compressed (norms)."""
    if param in ("embed_tokens.weight", "lm_head.weight"):
        return EMBEDDING
    if param.startswith("layers.") and param.endswith("_proj.weight"):
        return LINEAR
    return None


def mil_base(param: str) -> str:
    return "model_" + param.replace(".", "_")


def converted_name(param: str) -> str:
    """Name of the fp16 const that holds `param` right after conversion."""
    return mil_base(param) + FP16_SUFFIX


def param_of(mil_name: str, by_base: dict[str, str]) -> str | None:
    """The parameter a (possibly compressed) weight op holds, from its name; None if it holds none."""
    name = mil_name
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    return by_base.get(name.removesuffix(FP16_SUFFIX))


def compressible(params) -> dict[str, tuple[str, str]]:
    """{converted const name: (param, class)} for every parameter a recipe may compress."""
    out = {}
    for p in params:
        cls = weight_class(p)
        if cls is not None:
            out[converted_name(p)] = (p, cls)
    return out
