"""The eval set shipped with smolship (prose, multi-turn chat, code, math, JSON function calls).

Chat items are rendered with the model's own chat template, so parity covers the tokens an app sends.
Users can pass their own UTF-8 text file; it is split on blank lines into documents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from smolship.errors import SmolshipError


@dataclass(frozen=True)
class EvalDoc:
    id: str
    kind: str
    ids: tuple[int, ...]


def _builtin_items() -> list[dict]:
    text = resources.files("smolship.data").joinpath("eval.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _file_items(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise SmolshipError(f"Eval file '{path}' does not exist.", "Pass a UTF-8 text file (documents separated by blank lines).")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    parts = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return [{"id": f"{path.stem}-{i}", "kind": "user", "text": p} for i, p in enumerate(parts)]


def load_eval(tokenizer, path: Path | None = None, max_tokens: int | None = None,
              max_doc_tokens: int = 320, min_doc_tokens: int = 40) -> list[EvalDoc]:
    """Tokenized eval documents, each cut to `max_doc_tokens`, until `max_tokens` in total."""
    items = _file_items(path) if path else _builtin_items()
    docs, total = [], 0
    for item in items:
        if "messages" in item:
            ids = tokenizer.encode_chat(item["messages"], add_generation_prompt=False)
        else:
            ids = tokenizer.encode(item["text"])
        ids = ids[:max_doc_tokens]
        if len(ids) < min_doc_tokens:
            continue
        if max_tokens is not None and total + len(ids) > max_tokens:
            ids = ids[: max_tokens - total]
            if len(ids) < min_doc_tokens:
                break
        docs.append(EvalDoc(item.get("id", str(len(docs))), item.get("kind", "text"), tuple(ids)))
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    if not docs:
        raise SmolshipError("The eval set produced no document of at least "
                            f"{min_doc_tokens} tokens.", "Pass a longer eval text file.")
    return docs
