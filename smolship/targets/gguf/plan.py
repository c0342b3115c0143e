"""Which ggml type each tensor gets, and which tensors are copied bit for bit from a GGUF source.

Rules, first match wins (after ExecuTorch's QuantRule tables): 1-D tensors (norms) stay F32; a
user pattern from the ``tensor_types`` knob (regex on the GGUF name -> type); the token
embedding / untied output (the ``embedding_type`` knob, else F16 with ``keep_embeddings_fp``, else Q8_0 in
low-bit recipes); otherwise the recipe's type. A tensor whose source GGUF already holds it in the
chosen type is copied, never dequantized and quantized again.

For the llama.cpp recipes this module only plans the *intermediate* file: source blocks as they are
(llama.cpp copies any tensor whose type it keeps and dequantizes the rest itself), F32 otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smolship.errors import SmolshipError
from smolship.exporter.naming import ours_to_gguf
from smolship.targets.gguf.recipes import EMBEDDING_FP_TYPE, EMBEDDING_TYPE, GGUFKnobs, GGUFRecipe, Quantizer

FLOAT_TYPES = ("F32", "F16", "BF16")
EMBEDDING_NAMES = ("token_embd.weight", "output.weight")
BLOCK32_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
KQUANT_ROW = 256
# llama.cpp's tensor_type_fallback (src/llama-quant.cpp): k-quant -> 32-block type when a row is not a multiple of 256
KQUANT_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


@dataclass(frozen=True)
class TensorPlan:
    name: str  # GGUF name
    ours: str  # key in SourceModel.state_dict
    shape: tuple[int, ...]  # PyTorch order (out, in)
    type: str  # ggml type name written to the file
    copy: bool  # raw blocks from the source GGUF


def ggml_type(name: str):
    import gguf

    try:
        return gguf.GGMLQuantizationType[name.upper()]
    except KeyError:
        raise SmolshipError(f"'{name}' is not a ggml tensor type.",
                            "Use a type name such as F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K.") from None


def block_size(type_name: str) -> int:
    import gguf

    return gguf.GGML_QUANT_SIZES[ggml_type(type_name)][0]


def embedding_type(grecipe: GGUFRecipe, keep_fp: bool, knobs: GGUFKnobs) -> str | None:
    """Type forced on token_embd/output, or None to let the recipe (or llama.cpp) decide."""
    if knobs.embedding_type:
        return ggml_type(knobs.embedding_type).name
    if grecipe.weight_type in FLOAT_TYPES:
        return None
    if keep_fp:
        return EMBEDDING_FP_TYPE
    return EMBEDDING_TYPE if grecipe.low_bit else None


def bits_per_weight(type_name: str) -> float:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[ggml_type(type_name)]
    return 8 * size / block


def source_block_overrides(plans: list[TensorPlan], weight_type: str) -> dict[str, str]:
    """llama.cpp tensor-type overrides that keep a GGUF source's own 32-block tensors where llama.cpp would
    fall back from the k-quant (rows not a multiple of 256) to a 32-block type of as many or more bits:
    re-quantizing such a tensor can only add error, and copying it is no larger."""
    fallback = KQUANT_FALLBACK.get(weight_type)
    if fallback is None:
        return {}
    keep = {}
    for p in plans:
        if (p.copy and len(p.shape) == 2 and p.name not in EMBEDDING_NAMES and p.shape[1] % KQUANT_ROW
                and p.type in BLOCK32_TYPES and bits_per_weight(p.type) <= bits_per_weight(fallback)):
            keep[f"^{re.escape(p.name)}$"] = p.type
    return keep


def compiled_rules(rules: dict[str, str]) -> list[tuple[re.Pattern, str]]:
    out = []
    for pattern, type_name in rules.items():
        try:
            out.append((re.compile(pattern), ggml_type(type_name).name))
        except re.error as e:
            raise SmolshipError(f"tensor_types pattern '{pattern}' is not a valid regular expression ({e}).",
                                "Pass patterns such as r'attn_v\\.weight$' mapped to a type name.") from None
    return out


def choose_type(name: str, shape: tuple[int, ...], grecipe: GGUFRecipe, keep_fp: bool, knobs: GGUFKnobs) -> str:
    if len(shape) == 1:
        return "F32"
    for pattern, type_name in compiled_rules(knobs.tensor_types):
        if pattern.search(name):
            return type_name
    if name in EMBEDDING_NAMES:
        return embedding_type(grecipe, keep_fp, knobs) or grecipe.weight_type
    for pattern, type_name in compiled_rules(dict(grecipe.tensor_rules)):
        if pattern.search(name):
            return type_name
    return grecipe.weight_type


def check_fits(name: str, shape: tuple[int, ...], type_name: str, recipe_name: str) -> None:
    """A matrix row must hold whole blocks; refuse rather than silently write something else."""
    qk = block_size(type_name)
    if len(shape) == 2 and shape[1] % qk:
        raise SmolshipError(
            f"Type {type_name} (recipe {recipe_name}) stores rows in blocks of {qk} values, but tensor '{name}' has rows "
            f"of {shape[1]} values; this model cannot be exported with it.",
            "Choose f16, bf16 or f32 for this model (or a model whose hidden and MLP sizes are multiples of 32).",
        )


def source_type(source, name: str, shape: tuple[int, ...]) -> str | None:
    """The ggml type of `name` in the source GGUF when its shape matches, else None."""
    if source.gguf is None or name not in source.gguf.tensors:
        return None
    t = source.gguf.tensors[name]
    if tuple(reversed([int(d) for d in t.shape])) != tuple(shape):
        raise SmolshipError(
            f"Tensor '{name}' is {list(reversed([int(d) for d in t.shape]))} in '{source.gguf.path}' but {list(shape)} "
            "in the loaded weights.", "Reload the model from an unmodified file.")
    return t.tensor_type.name


def tensor_names(source) -> list[tuple[str, str, tuple[int, ...]]]:
    """(GGUF name, our name, shape) for every weight the file holds; a tied output is not duplicated."""
    out = []
    for ours, w in source.state_dict.items():
        if ours == "lm_head.weight" and source.config.tie_word_embeddings:
            continue
        try:
            out.append((ours_to_gguf(ours), ours, tuple(w.shape)))
        except KeyError:
            raise SmolshipError(f"Weight '{ours}' has no place in llama.cpp's Llama layout.",
                                "Pass a plain LlamaForCausalLM checkpoint (no adapters or extra heads).") from None
    return out


def llama_cpp_overrides(plans: list[TensorPlan], grecipe: GGUFRecipe, knobs: GGUFKnobs) -> tuple[dict[str, str], int]:
    """Tensor-type overrides for llama.cpp, in its first-match order: the user's, then the source blocks
    to keep (unless knobs.keep_source_blocks is False), then the recipe's rules; and how many are kept."""
    user = knobs.tensor_types
    compiled_rules(user)  # validate early, with smolship's error
    kept = source_block_overrides(plans, grecipe.weight_type) if knobs.keep_source_blocks else {}
    return {**user, **kept, **{p: t for p, t in grecipe.tensor_rules if p not in user}}, len(kept)


def plan_tensors(source, grecipe: GGUFRecipe, keep_fp: bool, knobs: GGUFKnobs) -> list[TensorPlan]:
    plans = []
    for name, ours, shape in tensor_names(source):
        src_type = source_type(source, name, shape)
        if grecipe.quantizer is Quantizer.LLAMA_CPP:  # intermediate: source blocks or F32
            check_fits(name, shape, "Q8_0", grecipe.recipe.name)  # k-quants fall back to 32-blocks, no further
            plans.append(TensorPlan(name, ours, shape, src_type or "F32", src_type is not None))
            continue
        want = choose_type(name, shape, grecipe, keep_fp, knobs)
        check_fits(name, shape, want, grecipe.recipe.name)
        plans.append(TensorPlan(name, ours, shape, want, want == src_type))
    return plans
