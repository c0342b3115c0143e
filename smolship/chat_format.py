"""The chat template as data: per-role prefix / suffix strings, the default system turn, stop strings.

Phone apps format prompts without a Jinja engine (ExecuTorch's LlmModule / TextRunner, the
onnxruntime-genai samples): they concatenate fixed strings. This module derives those strings from
the model's own chat template by rendering probe conversations with sentinel contents and cutting
the output at the sentinels (the same idea as llama.cpp's template detection), then **verifies** the
result: sample conversations rendered by the template and by `ChatFormat.render` must be equal,
character for character. A template that is not a plain concatenation (dates, tool calls, per-turn
conditions) fails that check and the bundle carries no chat format rather than a wrong one.

Rendering rule (what an app implements, see `ChatFormat.render`):
    prompt = bos_text
           + (system turn with `default_system` when the first message is not a system message
              and `default_system` is not null)
           + for each message: roles[role].prefix + content + roles[role].suffix
           + generation_prompt
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import jinja2

from smolship.errors import SmolshipError

FILE = "chat_format.json"
SCHEMA_VERSION = 1
ROLES = ("system", "user", "assistant")

# Sentinels no template writes by itself; contents are put in verbatim by every chat template we know.
_S, _U, _A, _U2, _A2 = "\x01SYS\x01", "\x01USR\x01", "\x01AST\x01", "\x01USR2\x01", "\x01AST2\x01"

# Conversations the derived format must reproduce exactly (both ways: template and ChatFormat.render).
SAMPLE_CONVERSATIONS: tuple[tuple[list[dict], bool], ...] = (
    ([{"role": "user", "content": "What is the capital of France?"}], True),
    ([{"role": "system", "content": "You are a terse assistant."},
      {"role": "user", "content": "Hi!"}], True),
    ([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
      {"role": "user", "content": "And times 3?\nExplain."}], True),
    ([{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"},
      {"role": "assistant", "content": "Bonjour"}], False),
    ([{"role": "user", "content": "  spaces and <b>markup</b> stay  "}], True),
)


@dataclass(frozen=True)
class Turn:
    prefix: str
    suffix: str


@dataclass(frozen=True)
class ChatFormat:
    roles: dict[str, Turn]
    generation_prompt: str  # appended after the last message to ask for the assistant's reply
    default_system: str | None  # system message the template inserts when none is given
    bos_text: str  # text written once at the start (e.g. "<s>"); "" for ChatML
    stop_strings: list[str]  # the turn end first
    stop_ids: list[int]  # the turn end's id first
    add_bos_token: bool  # whether the tokenizer itself prepends BOS (then the app must not add one)
    verified_conversations: int = 0
    source: str = "chat_template"
    # the bundle's context (prompt + reply tokens its KV cache holds): apps trim the history to fit it
    max_seq_len: int | None = None
    schema_version: int = SCHEMA_VERSION

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt an app builds by concatenation (module docstring); equals the template's output."""
        out = [self.bos_text]
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            sys = self.roles["system"]
            out.append(sys.prefix + self.default_system + sys.suffix)
        for m in messages:
            turn = self.roles[m["role"]]
            out.append(turn.prefix + m["content"] + turn.suffix)
        if add_generation_prompt:
            out.append(self.generation_prompt)
        return "".join(out)

    @property
    def turn_end(self) -> str:
        """The string the model writes to end its reply (the first stop string)."""
        return self.stop_strings[0]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["roles"] = {r: asdict(t) for r, t in self.roles.items()}
        d["rule"] = ("prompt = bos_text + [system prefix + default_system + system suffix, when the first message "
                     "is not a system message and default_system is not null] + per message: roles[role].prefix + "
                     "content + roles[role].suffix + generation_prompt; stop when a generated token is in stop_ids")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ChatFormat:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise SmolshipError(f"chat_format schema version {d.get('schema_version')} is not {SCHEMA_VERSION}.",
                                "Re-export the bundle with this smolship version.")
        keep = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        keep["roles"] = {r: Turn(**t) for r, t in d["roles"].items()}
        return cls(**keep)


def _cut(text: str, *marks: str) -> list[str]:
    """Split `text` at each sentinel in order; the pieces between them."""
    pieces = []
    for m in marks:
        head, sep, text = text.partition(m)
        if not sep:
            raise ValueError(f"the template dropped a message's content (sentinel {m!r})")
        pieces.append(head)
    return [*pieces, text]


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(f"{what}: {text!r} does not start with {prefix!r}")
    return text[len(prefix):]


def _strip_suffix(text: str, suffix: str, what: str) -> str:
    if not text.endswith(suffix):
        raise ValueError(f"{what}: {text!r} does not end with {suffix!r}")
    return text[: len(text) - len(suffix)]


def derive(tokenizer) -> ChatFormat:
    """Derive the concatenation format from `tokenizer.render_chat` (a ChatTokenizer) and verify it.

    Raises ValueError (with the reason) when the template is not a plain concatenation."""
    render = tokenizer.render_chat
    u = [{"role": "user", "content": _U}]
    gen_prompt = _strip_prefix(render(u, True), render(u, False), "generation prompt")
    # system, user, assistant, user: every boundary once
    conv = [{"role": "system", "content": _S}, {"role": "user", "content": _U},
            {"role": "assistant", "content": _A}, {"role": "user", "content": _U2},
            {"role": "assistant", "content": _A2}]
    head, sys_to_user, user_to_asst, asst_to_user, user2_to_asst2, tail = _cut(render(conv, False), _S, _U, _A, _U2, _A2)
    if user_to_asst != user2_to_asst2:
        raise ValueError("the boundary between user and assistant differs from turn to turn")
    assistant = Turn(prefix=gen_prompt, suffix=tail)
    user_suffix = _strip_suffix(user_to_asst, gen_prompt, "user -> assistant boundary")
    user_prefix = _strip_prefix(asst_to_user, tail, "assistant -> user boundary")
    system_suffix = _strip_suffix(sys_to_user, user_prefix, "system -> user boundary")
    # head = bos_text + system prefix; without a system message the template may insert a default one
    only_user_head = _cut(render(u, False), _U)[0]
    default_turn = _strip_suffix(only_user_head, user_prefix, "start of a conversation without a system message")
    bos_text, system_prefix = _split_bos(head, default_turn, tokenizer)
    default_system = None
    if default_turn != bos_text:
        body = _strip_prefix(default_turn, bos_text + system_prefix, "default system turn")
        default_system = _strip_suffix(body, system_suffix, "default system turn")
    turn_end = assistant.suffix.strip()
    turn_end_id = tokenizer.tokenizer.token_to_id(turn_end) if turn_end else None
    # the turn end first: apps that stop on one id only (swift-transformers) take stop_ids[0]
    stop_ids = [i for i in [turn_end_id] if i is not None] + [i for i in tokenizer.stop_ids if i != turn_end_id]
    stop_strings = [s for s in [turn_end, *(tokenizer.token(i) for i in stop_ids)] if s]
    fmt = ChatFormat(
        roles={"system": Turn(system_prefix, system_suffix), "user": Turn(user_prefix, user_suffix), "assistant": assistant},
        generation_prompt=gen_prompt, default_system=default_system, bos_text=bos_text,
        stop_strings=list(dict.fromkeys(stop_strings)), stop_ids=stop_ids, add_bos_token=bool(tokenizer.add_bos),
    )
    n = verify(fmt, tokenizer)
    return replace(fmt, verified_conversations=n)


def _split_bos(head: str, default_turn: str, tokenizer) -> tuple[str, str]:
    """head = bos_text + system prefix: bos_text is the BOS token's text when the template writes bos_token."""
    bos = tokenizer.token(tokenizer.bos_id) or ""
    if bos and "bos_token" in tokenizer.chat_template and head.startswith(bos) and default_turn.startswith(bos):
        return bos, head[len(bos):]
    return "", head


def verify(fmt: ChatFormat, tokenizer) -> int:
    """Render every sample conversation with the template and with `fmt`; raise ValueError on a difference.
    Also checks the turn end is one token that is a stop id (what the apps stop on)."""
    for messages, gen in SAMPLE_CONVERSATIONS:
        want, got = tokenizer.render_chat(messages, gen), fmt.render(messages, gen)
        if want != got:
            raise ValueError(f"rendering differs for {messages!r}: template {want!r}, chat_format {got!r}")
    ids = tokenizer.encode(fmt.stop_strings[0], add_bos=False) if fmt.stop_strings else []
    if len(ids) != 1 or ids != fmt.stop_ids[:1] or ids[0] not in tokenizer.stop_ids:
        raise ValueError(f"the turn end {fmt.turn_end!r} is not a single stop token (ids {ids}, stop ids {fmt.stop_ids})")
    return len(SAMPLE_CONVERSATIONS)


def describe(tokenizer) -> tuple[ChatFormat | None, str | None]:
    """(format, None), or (None, why there is none): no template, or one that is not a concatenation."""
    if not tokenizer.chat_template:
        return None, "the source has no chat template"
    try:
        return derive(tokenizer), None
    except (ValueError, SmolshipError, jinja2.TemplateError) as e:
        return None, f"the chat template is not a plain concatenation of fixed strings: {e}"


def write(folder: Path, fmt: ChatFormat) -> str:
    (Path(folder) / FILE).write_text(json.dumps(fmt.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return FILE


def read(folder: Path) -> ChatFormat:
    path = Path(folder) / FILE
    if not path.is_file():
        raise SmolshipError(f"{folder} has no {FILE}.", "Re-export the bundle with a model that has a chat template.")
    return ChatFormat.from_dict(json.loads(path.read_text()))


def add_to_bundle(folder: Path, manifest: dict, tokenizer) -> ChatFormat | None:
    """Write chat_format.json (when the template allows) and record it, or why not, in the manifest."""
    fmt, why = describe(tokenizer)
    if fmt is not None:
        fmt = replace(fmt, max_seq_len=manifest.get("max_seq_len"))
        write(folder, fmt)
    manifest["chat_format"] = fmt.to_dict() if fmt is not None else {"unavailable": why}
    return fmt
