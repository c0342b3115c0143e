"""The GGUF recipes as data: one row per `--quant` name, independent of gguf-py and llama.cpp.

A row names the ggml type of the layer matrices, which quantizer produces it and whether the token
embedding (and an untied output matrix) is held at 8 bits by default:

* ``gguf-py`` - F32/F16/BF16 and the 32-block types Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, quantized in numpy
  (bit-identical to llama.cpp's reference quantizers when no importance matrix is used).
* ``llama.cpp`` - the k-quant mixtures, through llama.cpp's own `llama_model_quantize` (its per-tensor
  type choices, its fallbacks for rows that are not a multiple of 256, its importance-matrix support).

Why the embedding stays at Q8_0 in 4/5-bit recipes: the tied token embedding is also the lm_head, and
quantizing it to 4 bits costs more accuracy than all other tensors together (measured on the 135M;
llama.cpp's own mixtures make the same choice for tied 576-wide embeddings).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from smolship.targets.base import Precision, Recipe
from smolship.targets.knobs import knob


class Quantizer(str, enum.Enum):
    GGUF_PY = "gguf-py"
    LLAMA_CPP = "llama.cpp"


@dataclass(frozen=True)
class GGUFRecipe:
    recipe: Recipe
    weight_type: str  # ggml type name of the layer matrices (for k-quant mixtures: the main type)
    quantizer: Quantizer
    ftype: int  # llama.cpp's llama_ftype, written to general.file_type
    low_bit: bool  # below 8 bits: embedding / output default to EMBEDDING_TYPE
    tensor_rules: tuple[tuple[str, str], ...] = ()  # (regex on the GGUF name, ggml type), first match wins


EMBEDDING_TYPE = "Q8_0"  # default type of token_embd (and an untied output) in low-bit recipes
EMBEDDING_FP_TYPE = "F16"  # with ExportOptions.keep_embeddings_fp


# attn_v at 8 bits in the k-quant mixtures: with 3 KV heads each V row serves 3 query heads, and on the
# 135M (llama.cpp's own fallbacks, imatrix) Q8_0 for every attn_v took kld_mean from 0.035 to 0.024 for
# +0.7 MB; Q8_0 for attn_output, attn_q or Q6_K for all of ffn_down gained far less per MB.
V8 = ((r"attn_v\.weight$", "Q8_0"),)


def _row(name: str, precision: Precision, description: str, weight_type: str, quantizer: Quantizer,
         ftype: int, low_bit: bool, rules: tuple = ()) -> GGUFRecipe:
    return GGUFRecipe(Recipe(name, precision, description), weight_type, quantizer, ftype, low_bit, rules)


_P, _L = Quantizer.GGUF_PY, Quantizer.LLAMA_CPP
GGUF_RECIPES: dict[str, GGUFRecipe] = {r.recipe.name: r for r in (
    _row("f32", Precision.FP32, "all tensors in float32 (reference-exact)", "F32", _P, 0, False),
    _row("f16", Precision.FP16, "matrices in float16, norms in float32", "F16", _P, 1, False),
    _row("bf16", Precision.FP16, "matrices in bfloat16, norms in float32", "BF16", _P, 32, False),
    _row("q8_0", Precision.INT8, "8-bit symmetric blocks of 32 (Q8_0)", "Q8_0", _P, 7, False),
    _row("q4_0", Precision.INT4, "4-bit symmetric blocks of 32 (Q4_0), embedding Q8_0", "Q4_0", _P, 2, True),
    _row("q4_1", Precision.INT4, "4-bit asymmetric blocks of 32 (Q4_1), embedding Q8_0", "Q4_1", _P, 3, True),
    _row("q5_0", Precision.INT4, "5-bit symmetric blocks of 32 (Q5_0), embedding Q8_0", "Q5_0", _P, 8, True),
    _row("q5_1", Precision.INT4, "5-bit asymmetric blocks of 32 (Q5_1), embedding Q8_0", "Q5_1", _P, 9, True),
    _row("q4_k_m", Precision.INT4, "llama.cpp Q4_K_M mixture with importance matrix; attn_v and embedding Q8_0",
         "Q4_K", _L, 15, True, V8),
    _row("q5_k_m", Precision.INT4, "llama.cpp Q5_K_M mixture with importance matrix; attn_v and embedding Q8_0",
         "Q5_K", _L, 17, True, V8),
    _row("q6_k", Precision.INT4, "llama.cpp Q6_K (importance matrix), embedding Q8_0", "Q6_K", _L, 18, True),
)}

RECIPES: dict[str, Recipe] = {name: r.recipe for name, r in GGUF_RECIPES.items()}
DEFAULT_RECIPES: tuple[str, ...] = ("q8_0", "q4_k_m")


@dataclass(frozen=True)
class GGUFKnobs:
    """ExportOptions.extra for GGUF."""

    embedding_type: str | None = knob(None, "ggml type for token_embd / untied output (e.g. Q4_0 for an all-4-bit variant)")
    tensor_types: dict = knob({}, "{regex on GGUF tensor name: ggml type}, first match wins (both quantizers)")
    imatrix: bool = knob(True, "False: quantize k-quants without an importance matrix")
    imatrix_tokens: int | None = knob(None, "calibration tokens (default 2048; held-out text unless calibration_text)")
    keep_source_blocks: bool = knob(True, "False: let llama.cpp re-quantize a GGUF source's 32-block tensors where it falls back from a k-quant")
    quantizer: str | None = knob(None, "'llama.cpp' to send a 32-block type through llama.cpp (with the imatrix) too")
    threads: int = knob(0, "quantizer threads (0: all cores)")
    license: str | None = knob(None, "general.license when the source does not say")
