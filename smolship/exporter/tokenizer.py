"""Tokenizer, chat template and stop tokens: read from the source, carried into every bundle.

`ChatTokenizer` wraps a Hugging Face `tokenizers.Tokenizer` (the same object that writes
tokenizer.json) and renders chat prompts with the same Jinja settings transformers uses, so the
prompt a bundle sees equals `apply_chat_template` on the original model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
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
        return _compile(self.chat_template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.token(self.bos_id) or "",
            eos_token=self.token(self.eos_id) or "",
        )

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
        tok = Tokenizer.from_file(str(tj))
        cfg_path = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        if generation_config is None:
            gpath = folder / "generation_config.json"
            generation_config = json.loads(gpath.read_text()) if gpath.is_file() else {}
        template = cfg.get("chat_template")
        tpl_file = folder / "chat_template.jinja"
        if template is None and tpl_file.is_file():
            template = tpl_file.read_text()
        if isinstance(template, list):  # transformers' named-template form
            template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])

        def tok_id(key: str) -> int | None:
            val = cfg.get(key)
            if isinstance(val, dict):
                val = val.get("content")
            return tok.token_to_id(val) if val else None

        eos = generation_config.get("eos_token_id")
        eos_list = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
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


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _compile(template: str) -> jinja2.Template:
    """Jinja set up as transformers does for chat templates."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent, ensure_ascii=ensure_ascii)
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
