"""Fuzz harnesses: one function per reader of untrusted files. Bytes in; only SmolshipError may come out.

`run.py` drives them with atheris (coverage-guided, libFuzzer) and `test_fuzz.py` replays the seed
corpus under `corpus/<reader>/` (plus every crash found so far, kept there as a regression case) in CI.
Each reader gets its input as the file a user would hand smolship, written to a fresh path every time
(gguf-py memory-maps its file, so rewriting a mapped file in place would fault).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

from smolship.errors import SmolshipError

WORK = Path(tempfile.mkdtemp(prefix="smolship-fuzz-"))
_n = itertools.count()
TOKENIZER_SPLIT = b"\n--tokenizer.json--\n"  # tokenizer input: tokenizer_config.json, SPLIT, tokenizer.json
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|im_end|> {{ x }}"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Capital of France?"}]


def _fresh_dir() -> Path:
    n = next(_n)
    shutil.rmtree(WORK / str(n - 1), ignore_errors=True)  # a long run must not fill the disk
    d = WORK / str(n)
    d.mkdir()
    return d


def _read_as_file(data: bytes, name: str, reader, pass_folder: bool = False) -> None:
    """Write `data` as `name` in a fresh folder and hand the file (or its folder) to `reader`."""
    path = _fresh_dir() / name
    path.write_bytes(data)
    try:
        reader(path.parent if pass_folder else path)
    except SmolshipError:
        pass


def gguf(data: bytes) -> None:
    """exporter/gguf_source.load_gguf: header, metadata, tensor table, tokenizer, dequantized tensors; and the
    GGUF target's tensor index (targets/gguf/index.tensor_table), which shares its header walker."""
    from smolship.exporter.gguf_source import load_gguf
    from smolship.targets.gguf.index import tensor_table

    _read_as_file(data, "model.gguf", load_gguf)
    _read_as_file(data, "model.gguf", tensor_table)


def safetensors(data: bytes) -> None:
    """exporter/hf_weights.read_weights on one .safetensors file (header checked, then loaded)."""
    from smolship.exporter.hf_weights import read_weights

    _read_as_file(data, "model.safetensors", read_weights, pass_folder=True)


def config(data: bytes) -> None:
    """exporter/config.read_hf_config: a Hugging Face config.json."""
    from smolship.exporter.config import read_hf_config

    _read_as_file(data, "config.json", read_hf_config)


def tokenizer(data: bytes) -> None:
    """exporter/tokenizer.ChatTokenizer.from_folder (tokenizer.json + tokenizer_config.json), then
    encode, decode and render a chat with whatever template it carries."""
    from smolship.exporter.tokenizer import ChatTokenizer

    folder = _fresh_dir()
    cfg, sep, tok = data.partition(TOKENIZER_SPLIT)
    if sep:
        (folder / "tokenizer_config.json").write_bytes(cfg)
    (folder / "tokenizer.json").write_bytes(tok if sep else data)
    try:
        t = ChatTokenizer.from_folder(folder)
        ids = t.encode("Hello, world! 123")
        t.decode(ids)
        if t.chat_template:
            t.encode_chat(MESSAGES)
    except SmolshipError:
        pass


def template(data: bytes) -> None:
    """exporter/tokenizer: a chat template (sandboxed Jinja) rendered as for a chat prompt."""
    from smolship.exporter.tokenizer import ChatTokenizer

    t = ChatTokenizer(tokenizer=_tiny_tokenizer(), chat_template=data.decode("utf-8", "replace"), bos_id=0, eos_id=1)
    try:
        t.render_chat(MESSAGES)
    except SmolshipError:
        pass


_TINY = None


def _tiny_tokenizer():
    global _TINY
    if _TINY is None:
        from tokenizers import Tokenizer, models

        _TINY = Tokenizer(models.BPE(vocab={"<s>": 0, "</s>": 1, "a": 2}, merges=[]))
    return _TINY


HARNESSES = {"gguf": gguf, "safetensors": safetensors, "config": config, "tokenizer": tokenizer, "template": template}
