"""Everything llama.cpp reads from a GGUF besides the tensors: `llama.*` hyper-parameters, the tokenizer
(`tokenizer.ggml.*`, byte-level BPE as model "gpt2"), the chat template and `general.*` provenance.

The tokenizer is rebuilt from the source's Hugging Face `tokenizers` object, so a GGUF source and a
Hugging Face folder give the same file; for a GGUF source the result equals the source's own
`tokenizer.ggml.*` arrays (tests check this on the 135M).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from smolship.errors import SmolshipError

# llama.cpp's llama_token_type
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4
# general.* keys carried over from a GGUF source when present (the rest is written from smolship's own facts)
CARRIED_GENERAL_KEYS = ("general.organization", "general.basename", "general.finetune", "general.license.name",
                        "general.license.link", "general.languages", "general.tags")
CARRIED_GENERAL_PREFIXES = ("general.source.", "general.base_model.")


def add_llama_hparams(w, cfg, context_length: int) -> None:
    """`llama.*` keys: the shapes llama.cpp's llm_build_llama needs."""
    w.add_context_length(context_length)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_layers)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_rope_freq_base(float(cfg.rope_theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.head_dim)
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:  # decoupled head size (llama.cpp reads these)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)


# --- tokenizer ----------------------------------------------------------------------------------------

def pre_tokenizer_name(tok_json: dict, source_fields: dict | None) -> str:
    """llama.cpp's name for the pre-tokenizer: the source's own value, else recognised from tokenizer.json."""
    if source_fields and source_fields.get("tokenizer.ggml.pre"):
        return source_fields["tokenizer.ggml.pre"]
    pre = tok_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(p.get("type"), p.get("individual_digits")) for p in parts]
    if kinds == [("Digits", True), ("ByteLevel", None)]:
        return "smollm"  # SmolLM/SmolLM2: digits split one by one, then GPT-2 byte-level BPE
    if kinds == [("ByteLevel", None)] and parts[0].get("use_regex", True):
        return "gpt-2"
    raise SmolshipError(
        f"The tokenizer's pre-tokenizer {kinds} is not one llama.cpp knows by name (smolship maps SmolLM's "
        "Digits+ByteLevel and GPT-2's ByteLevel).",
        "Export a SmolLM2 / Llama model with a byte-level BPE tokenizer, or convert this one with llama.cpp's "
        "convert_hf_to_gguf.py.",
    )


def vocab_arrays(tokenizer, tj: dict, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types, merges "a b") for `tokenizer.ggml.*`, padded to the model's vocab size.
    `tj` is the tokenizer's JSON (tokenizer.to_str()) parsed."""
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise SmolshipError(f"The tokenizer is a '{model.get('type')}' model; the GGUF target writes byte-level BPE only.",
                            "Use a model with a GPT-2 style BPE tokenizer, such as SmolLM2.")
    by_id = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    if by_id and max(by_id) >= vocab_size:
        raise SmolshipError(f"The tokenizer has token id {max(by_id)} but the model's vocabulary holds {vocab_size} rows.",
                            "Pass a tokenizer that belongs to this checkpoint.")
    specials = {a["id"]: a.get("special", False) for a in tj.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows beyond the tokenizer (padding), as convert_hf_to_gguf.py does
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_USER_DEFINED)
            continue
        tokens.append(by_id[i])
        types.append(TOKEN_NORMAL if i not in specials else TOKEN_CONTROL if specials[i] else TOKEN_USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def add_tokenizer(w, chat_tok, vocab_size: int, source_fields: dict | None) -> None:
    tj = json.loads(chat_tok.tokenizer.to_str())
    tokens, types, merges = vocab_arrays(chat_tok.tokenizer, tj, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer_name(tj, source_fields))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for adder, idx in ((w.add_bos_token_id, chat_tok.bos_id), (w.add_eos_token_id, chat_tok.eos_id),
                       (w.add_unk_token_id, chat_tok.unk_id), (w.add_pad_token_id, chat_tok.pad_id)):
        if idx is not None:
            adder(int(idx))
    w.add_add_bos_token(bool(chat_tok.add_bos))
    w.add_add_space_prefix(False)
    if chat_tok.chat_template:
        w.add_chat_template(chat_tok.chat_template)


# --- general.* -----------------------------------------------------------------------------------------

def _readme_license(ref: str | None) -> str | None:
    """`license:` from a local Hugging Face folder's README front matter, if there is one."""
    if not ref:
        return None
    readme = Path(ref) / "README.md"
    if not readme.is_file():
        return None
    m = re.search(r"^license:\s*([\w.\-]+)\s*$", readme.read_text(errors="replace")[:4000], re.MULTILINE)
    return m.group(1) if m else None


def add_general(w, source, ftype: int, n_params: int, license_: str | None = None) -> None:
    """general.name/size_label/license/source + smolship provenance; a GGUF source's general.* carried over."""
    import gguf

    from smolship import __version__

    fields = source.gguf.fields if source.gguf is not None else {}
    w.add_type("model")
    w.add_name(source.name)
    w.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    carried = [k for k in fields if k in CARRIED_GENERAL_KEYS or k.startswith(CARRIED_GENERAL_PREFIXES)]
    kind, ref = source.source.get("kind"), source.source.get("ref")
    if kind == "hub" and ref:
        w.add_source_url(f"https://huggingface.co/{ref}")
        w.add_source_repo_url(f"https://huggingface.co/{ref}")
        carried = [k for k in carried if k not in ("general.source.url", "general.source.repo_url")]
    for key in carried:
        val = fields[key]
        if isinstance(val, list):
            w.add_array(key, val)
        elif isinstance(val, int) and not isinstance(val, bool):
            w.add_uint32(key, val)
        elif val not in (None, ""):
            w.add_string(key, str(val))
    license_ = license_ or fields.get("general.license") or _readme_license(ref)
    if license_:
        w.add_license(str(license_))
    if fields.get("general.name"):
        w.add_string("smolship.source.general_name", str(fields["general.name"]))
    w.add_string("smolship.source.kind", str(kind))
    if source.source.get("sha256"):
        w.add_string("smolship.source.sha256", source.source["sha256"])
    w.add_quantized_by(f"smolship {__version__}")
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
