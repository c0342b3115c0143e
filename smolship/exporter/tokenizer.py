"""Tokenizer, chat template and stop tokens: read from the source, carried into every bundle.

`ChatTokenizer` wraps a Hugging Face `tokenizers.Tokenizer` (the same object that writes
tokenizer.json) and renders chat prompts with the same Jinja settings transformers uses, so the
prompt a bundle sees equals `apply_chat_template` on the original model.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from smolship.errors import SmolshipError

# GGUF token types (llama.cpp's llama_token_type)
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

STOP_TOKEN_CANDIDATES = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>")


@dataclass
class ChatTokenizer:
    tokenizer: Tokenizer
    chat_template: str | None
    bos_id: int | None
    eos_id: int
    pad_id: int | None = None
    unk_id: int | None = None
    add_bos: bool = False
    extra_stop_ids: list[int] = field(default_factory=list)

    # --- identity -------------------------------------------------------------------------------
    def token(self, idx: int | None) -> str | None:
        return None if idx is None else self.tokenizer.id_to_token(idx)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def stop_ids(self) -> list[int]:
        """eos plus the turn-end tokens the chat template emits (e.g. <|im_end|> for ChatML)."""
        ids = {self.eos_id, *self.extra_stop_ids}
        if self.chat_template:
            for tok in STOP_TOKEN_CANDIDATES:
                idx = self.tokenizer.token_to_id(tok)
                if idx is not None and tok in self.chat_template:
                    ids.add(idx)
        return sorted(ids)

    # --- text <-> ids ---------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise SmolshipError(
                "This model has no chat template, so a chat prompt cannot be rendered.",
                "Use a plain text prompt, or load an instruct model whose source carries a chat template.",
            )
        try:
            return _compile(self.chat_template).render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.token(self.bos_id) or "",
                eos_token=self.token(self.eos_id) or "",
            )
        except MemoryError:
            raise
        except Exception as e:  # TemplateError, SecurityError, or a TypeError/ZeroDivisionError... in the template
            raise SmolshipError(f"The model's chat template could not be rendered ({type(e).__name__}: {str(e)[:200]}).",
                                "Fix the chat_template in tokenizer_config.json (or the GGUF metadata), "
                                "or use a plain text prompt.") from None

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        # The template writes any BOS itself; never add a second one.
        return self.encode(self.render_chat(messages, add_generation_prompt), add_bos=False)

    # --- files ----------------------------------------------------------------------------------
    def save(self, folder: Path) -> list[str]:
        """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json (transformers-loadable)."""
        folder = Path(folder)
        self.tokenizer.save(str(folder / "tokenizer.json"))
        special = {
            "bos_token": self.token(self.bos_id),
            "eos_token": self.token(self.eos_id),
            "pad_token": self.token(self.pad_id),
            "unk_token": self.token(self.unk_id),
        }
        special = {k: v for k, v in special.items() if v is not None}
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 8192,
            "add_bos_token": self.add_bos,
            "clean_up_tokenization_spaces": False,
            **special,
            "chat_template": self.chat_template,
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False))
        return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]

    @classmethod
    def from_folder(cls, folder: Path, generation_config: dict | None = None) -> "ChatTokenizer":
        """Read tokenizer.json + tokenizer_config.json (+ generation_config.json) from an HF folder or bundle."""
        folder = Path(folder)
        tj = folder / "tokenizer.json"
        if not tj.is_file():
            raise SmolshipError(
                f"No tokenizer.json in {folder}.",
                "smolship needs a fast tokenizer: save it with transformers (tokenizer.save_pretrained) first.",
            )
        try:
            tok = Tokenizer.from_file(str(tj))
        except Exception as e:  # the tokenizers library raises plain Exceptions on malformed files
            raise SmolshipError(f"{tj} is not a tokenizer the tokenizers library can read ({str(e)[:200]}).",
                                "Re-download it, or save it again with tokenizer.save_pretrained.") from None
        cfg = _json_object(folder / "tokenizer_config.json")
        if generation_config is None:
            generation_config = _json_object(folder / "generation_config.json")
        template = cfg.get("chat_template")
        tpl_file = folder / "chat_template.jinja"
        if template is None and tpl_file.is_file():
            template = tpl_file.read_text(errors="replace")
        if isinstance(template, list):  # transformers' named-template form
            named = [t for t in template if isinstance(t, dict) and isinstance(t.get("template"), str)]
            template = next((t["template"] for t in named if t.get("name") == "default"), named[0]["template"] if named else None)
        if template is not None and not isinstance(template, str):
            raise SmolshipError(f"chat_template in {folder / 'tokenizer_config.json'} is a {type(template).__name__}, not text.",
                                "Fix tokenizer_config.json: chat_template must be a Jinja string.")
        vocab = tok.get_vocab_size(with_added_tokens=True)

        def tok_id(key: str) -> int | None:
            val = cfg.get(key)
            if isinstance(val, dict):
                val = val.get("content")
            return tok.token_to_id(val) if isinstance(val, str) and val else None

        eos = generation_config.get("eos_token_id")
        eos_list = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        ids = eos_list + [generation_config.get("bos_token_id")]
        if any(i is not None and (type(i) is not int or not 0 <= i < vocab) for i in ids):
            raise SmolshipError(f"generation_config.json in {folder} names token ids {ids} outside the vocabulary (0..{vocab - 1}).",
                                "Fix eos_token_id / bos_token_id in generation_config.json.")
        eos_id = tok_id("eos_token") if tok_id("eos_token") is not None else (eos_list[0] if eos_list else None)
        if eos_id is None:
            raise SmolshipError(f"Cannot find the end-of-sequence token in {folder}.",
                                "Add eos_token to tokenizer_config.json or eos_token_id to generation_config.json.")
        bos_id = tok_id("bos_token")
        if bos_id is None:
            bos_id = generation_config.get("bos_token_id")
        return cls(
            tokenizer=tok, chat_template=template, bos_id=bos_id, eos_id=eos_id,
            pad_id=tok_id("pad_token"), unk_id=tok_id("unk_token"),
            add_bos=bool(cfg.get("add_bos_token", False)),
            extra_stop_ids=[i for i in eos_list if i != eos_id],
        )

    def generation_config(self) -> dict:
        stops = self.stop_ids
        return {
            "bos_token_id": self.bos_id,
            "eos_token_id": stops if len(stops) > 1 else self.eos_id,
            "pad_token_id": self.pad_id if self.pad_id is not None else self.eos_id,
            "do_sample": False,
        }


def _json_object(path: Path) -> dict:
    """A JSON object file, {} when absent; malformed -> SmolshipError naming the file."""
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise SmolshipError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:120]}).",
                            "Re-download the model folder, or fix that file.") from None
    if not isinstance(obj, dict):
        raise SmolshipError(f"{path} holds a JSON {type(obj).__name__}, not an object.", "Re-download the model folder.")
    return obj


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


# A chat template comes with the model, so it is untrusted input: besides the sandbox (no attribute
# escapes, range() <= 100,000 items), no value it builds may exceed MAX_TEMPLATE_SIZE items or
# characters, and no integer MAX_TEMPLATE_BITS bits, so a 20-byte template cannot allocate gigabytes.
MAX_TEMPLATE_SIZE = 1_000_000
MAX_TEMPLATE_BITS = 4096


def _check_size(value):
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > MAX_TEMPLATE_BITS:
            raise SecurityError(f"the template builds an integer of {value.bit_length()} bits")
    elif isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_TEMPLATE_SIZE:
        raise SecurityError(f"the template builds a {type(value).__name__} of {len(value):,} items")
    return value


def _check_args(args, kwargs):
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_TEMPLATE_SIZE:
            raise SecurityError(f"the template passes {a} where at most {MAX_TEMPLATE_SIZE:,} is allowed")


class _ChatSandbox(ImmutableSandboxedEnvironment):
    """The sandbox transformers uses, plus bounded sizes for what * ** + and calls may build."""

    intercepted_binops = frozenset(["*", "**", "+"])

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, int) and isinstance(left, int) and \
                abs(left) > 1 and right * max(1, abs(left).bit_length()) > MAX_TEMPLATE_BITS:
            raise SecurityError(f"the template computes {left} ** {right}")
        if operator == "*":  # check the size before building it
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_TEMPLATE_SIZE:
                    raise SecurityError(f"the template repeats a {type(seq).__name__} {n} times")
        return _check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's own signature
        _check_args(args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs))


def _bounded_filter(f):
    @functools.wraps(f)
    def run(*args, **kwargs):
        _check_args(args[1:] if getattr(f, "jinja_pass_arg", None) else args, kwargs)
        return _check_size(f(*args, **kwargs))
    return run


def _compile(template: str) -> jinja2.Template:
    """Jinja set up as transformers does for chat templates, with bounded sizes (above)."""
    env = _ChatSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent, ensure_ascii=ensure_ascii)
    env.filters = {name: _bounded_filter(f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def tokenizer_from_gguf_fields(fields: dict) -> ChatTokenizer:
    """Build a byte-level BPE tokenizer from llama.cpp's `tokenizer.ggml.*` metadata."""
    model = fields.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise SmolshipError(
            f"The GGUF tokenizer model is '{model}'; smolship reads byte-level BPE ('gpt2') tokenizers.",
            "Use a Llama-architecture model with a GPT-2 style BPE tokenizer, such as SmolLM2.",
        )
    tokens: list[str] = fields["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    types: list[int] = fields.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    # SmolLM2 ('smollm' pre-tokenizer in llama.cpp) splits digits one by one before byte-level BPE.
    pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
    if fields.get("tokenizer.ggml.pre") in ("smollm", None):
        pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types)
                if ty in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)]
    tok.add_special_tokens(specials)
    return ChatTokenizer(
        tokenizer=tok,
        chat_template=fields.get("tokenizer.chat_template"),
        bos_id=fields.get("tokenizer.ggml.bos_token_id"),
        eos_id=fields["tokenizer.ggml.eos_token_id"],
        pad_id=fields.get("tokenizer.ggml.padding_token_id"),
        unk_id=fields.get("tokenizer.ggml.unknown_token_id"),
        add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
    )
