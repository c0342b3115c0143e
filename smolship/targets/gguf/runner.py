"""A Runner over llama.cpp (llama-cpp-python): the artifact runs in llama.cpp's own graph and KV cache.

`Llama.eval(ids)` appends tokens to llama.cpp's KV cache (it first drops cache cells at or beyond
`n_tokens`, so setting `n_tokens = 0` is a real reset) and, with ``logits_all=True``, stores one logit
row per position in `Llama.scores`. Prefill returns every prompt position; decode returns the last.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smolship.errors import SmolshipError
from smolship.runner import Runner


def open_llama(path: Path, n_ctx: int, threads: int | None = None):
    """llama_cpp.Llama over `path`, quiet, per-position logits; a bad file -> SmolshipError.

    threads=None keeps llama-cpp-python's default (half the logical cores: spinning worker threads on
    hyper-threads or a shared machine slow llama.cpp down more than they help)."""
    import llama_cpp

    threads = threads or max(1, (os.cpu_count() or 2) // 2)
    n_batch = min(512, n_ctx)
    try:
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, logits_all=True,
                               n_threads=threads, n_threads_batch=threads, verbose=False)
    except (ValueError, RuntimeError, OSError) as e:
        raise SmolshipError(f"llama.cpp could not load '{path}' ({e}).",
                            "Re-export the bundle; if the file was copied, check that the copy is complete.") from None


MODEL_FILE = "model.gguf"


def open_bundle(bundle: Path, manifest: dict, threads: int | None = None) -> "LlamaCppRunner":
    """The bundle's GGUF file in the llama.cpp installed here (`Target.load_runner` and the runtime host)."""
    name = (manifest.get("target_info") or {}).get("gguf_file", MODEL_FILE)
    path = Path(bundle) / name
    if not path.is_file():
        raise SmolshipError(f"The bundle '{bundle}' has no {name}.", "Re-export the bundle with `smolship export --target gguf`.")
    return LlamaCppRunner(path, max_seq_len=int(manifest.get("max_seq_len", 2048)), threads=threads)


class LlamaCppRunner(Runner):
    name = "llama.cpp"

    def __init__(self, path: Path, max_seq_len: int = 2048, threads: int | None = None):
        self.max_seq_len = max_seq_len
        self.llm = open_llama(path, max_seq_len, threads)
        self.vocab = self.llm.n_vocab()

    def reset(self) -> None:
        self.llm.reset()

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.reset()
        self._check_room(0, len(ids))
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)  # (T, V), copied out of the buffer

    def decode(self, token: int) -> np.ndarray:
        pos = self.llm.n_tokens
        self._check_room(pos, 1)
        self.llm.eval([int(token)])
        return np.array(self.llm.scores[pos], dtype=np.float32)  # (V,)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()
