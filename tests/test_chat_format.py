"""chat_format: the chat template as concatenation strings, derived and checked both ways.

The derived strings must render every conversation exactly as the Jinja template does (the template
renders through ChatTokenizer, which matches transformers' apply_chat_template), and a template that
is not a plain concatenation must give no format rather than a wrong one.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from smolship import chat_format
from smolship.chat_format import ChatFormat, derive, describe

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def with_template(tokenizer, template: str):
    return dataclasses.replace(tokenizer, chat_template=template)


def random_conversations(n: int, seed: int = 0):
    """Conversations the derivation never saw: random roles order (system only first), odd contents."""
    rng = random.Random(seed)
    pieces = ["Paris", "  ", "\n", "line\nbreak", "<b>x</b>", "émoji 🚀", "{{ not jinja }}", "", "tab\t"]
    for _ in range(n):
        msgs = [{"role": "system", "content": rng.choice(pieces)}] if rng.random() < 0.5 else []
        for i in range(rng.randint(1, 5)):
            msgs.append({"role": ("user", "assistant")[i % 2], "content": "".join(rng.choices(pieces, k=3))})
        yield msgs, rng.random() < 0.7


def test_smollm2_chatml_strings(tiny_model):
    """random:tiny carries SmolLM2-135M-Instruct's tokenizer and chat template."""
    tok = tiny_model.tokenizer
    fmt = derive(tok)
    assert fmt.roles["user"].prefix == "<|im_start|>user\n" and fmt.roles["user"].suffix == "<|im_end|>\n"
    assert fmt.roles["system"].prefix == "<|im_start|>system\n" and fmt.roles["assistant"].suffix == "<|im_end|>\n"
    assert fmt.generation_prompt == "<|im_start|>assistant\n"
    assert fmt.default_system == SMOL_SYSTEM
    assert fmt.bos_text == "" and fmt.add_bos_token is False
    assert fmt.stop_strings[0] == "<|im_end|>" and fmt.stop_ids[0] == tok.tokenizer.token_to_id("<|im_end|>")
    assert sorted(fmt.stop_ids) == sorted(tok.stop_ids)  # the same ids the runtimes stop on
    assert fmt.verified_conversations == len(chat_format.SAMPLE_CONVERSATIONS)


def test_renders_unseen_conversations_like_the_template(tiny_model):
    tok = tiny_model.tokenizer
    fmt = derive(tok)
    for messages, gen in random_conversations(40):
        assert fmt.render(messages, gen) == tok.render_chat(messages, gen), messages


def test_json_round_trip_keeps_the_rendering(tiny_model, tmp_path):
    fmt = derive(tiny_model.tokenizer)
    chat_format.write(tmp_path, fmt)
    back = chat_format.read(tmp_path)
    assert back == fmt
    data = json.loads((tmp_path / chat_format.FILE).read_text())
    assert set(data["roles"]) == {"system", "user", "assistant"} and "rule" in data


def test_bos_written_by_the_template(tiny_model):
    """A template that writes bos_token and ends turns with a stop token (<|endoftext|> here)."""
    tpl = ("{{ bos_token }}{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}<|endoftext|>\n"
           "{% endfor %}{% if add_generation_prompt %}### assistant:\n{% endif %}")
    tok = with_template(tiny_model.tokenizer, tpl)
    fmt = derive(tok)
    assert fmt.bos_text == tok.token(tok.bos_id) and fmt.default_system is None
    assert fmt.roles["user"] == chat_format.Turn("### user:\n", "<|endoftext|>\n")
    assert fmt.stop_strings[0] == "<|endoftext|>" and fmt.stop_ids[0] == tok.tokenizer.token_to_id("<|endoftext|>")
    for messages, gen in random_conversations(20, seed=1):
        assert fmt.render(messages, gen) == tok.render_chat(messages, gen)


@pytest.mark.parametrize("template, reason", [
    # numbered turns: not fixed strings
    ("{% for m in messages %}{{ loop.index }}. {{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
     "{% if add_generation_prompt %}assistant: {% endif %}", "not a plain concatenation"),
    # no system role (Gemma-like)
    ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
     "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}", "no system role"),
    # the turn end is not a stop token
    ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</turn>{% endfor %}"
     "{% if add_generation_prompt %}<assistant>{% endif %}", "not a single stop token"),
])
def test_templates_that_are_not_concatenations_give_no_format(tiny_model, template, reason):
    fmt, why = describe(with_template(tiny_model.tokenizer, template))
    assert fmt is None and reason in why, why


def test_no_template_no_format(tiny_model):
    fmt, why = describe(with_template(tiny_model.tokenizer, None))
    assert fmt is None and "no chat template" in why


def test_schema_version_is_checked(tiny_model):
    d = derive(tiny_model.tokenizer).to_dict()
    d["schema_version"] = 99
    with pytest.raises(Exception, match="schema version"):
        ChatFormat.from_dict(d)
