"""Tokenizer, chat template and stop tokens equal what transformers and llama.cpp see for the model."""

from __future__ import annotations

import pytest

from smolship.exporter.sources import default_model_path
from smolship.exporter.tokenizer import tokenizer_from_gguf_fields
from smolship.evalset import _builtin_items

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3*7?"}],
    [{"role": "user", "content": "Unicode: café, naïve, 東京, emoji 🚀\nnew line\ttab"}],
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    """transformers' own reading of the same GGUF (an independent implementation)."""
    from transformers import AutoTokenizer

    path = default_model_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_prompt_equals_transformers(default_model, hf_tokenizer, messages, add_generation_prompt):
    want = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert default_model.tokenizer.render_chat(messages, add_generation_prompt) == want


def test_saved_tokenizer_files_load_in_transformers(default_model, tmp_path):
    from transformers import AutoTokenizer

    default_model.tokenizer.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    for messages in CONVERSATIONS:
        want = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if isinstance(want, dict):
            want = want["input_ids"]
        assert default_model.tokenizer.encode_chat(messages) == list(want)
    assert hf.eos_token == "<|im_end|>" and hf.bos_token == "<|im_start|>"


def test_token_ids_match_llama_cpp_on_the_eval_set(default_model):
    """llama.cpp's own tokenizer (vocab-only load of the GGUF) gives the same ids for every eval item."""
    from llama_cpp import Llama

    llm = Llama(str(default_model_path()), vocab_only=True, verbose=False)
    tok = default_model.tokenizer
    for item in _builtin_items():
        text = tok.render_chat(item["messages"], False) if "messages" in item else item["text"]
        assert tok.encode(text) == llm.tokenize(text.encode(), add_bos=False, special=True), item["id"]
    assert tok.decode(tok.encode("Paris is 2,148,271 people.")) == "Paris is 2,148,271 people."


def test_stop_tokens_for_instruct_and_base_models(default_model):
    from smolship.exporter.gguf_source import open_gguf

    assert [default_model.tokenizer.token(i) for i in default_model.tokenizer.stop_ids] == ["<|im_end|>"]
    fields = dict(open_gguf(default_model_path()).fields)
    fields.pop("tokenizer.chat_template")  # a base SmolLM2: no template, eos = <|endoftext|>
    fields["tokenizer.ggml.eos_token_id"] = 0
    base = tokenizer_from_gguf_fields(fields)
    assert base.stop_ids == [0] and base.chat_template is None
    assert base.generation_config()["eos_token_id"] == 0
