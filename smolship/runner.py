"""The one interface every artifact is driven through, and the PyTorch reference that implements it.

A `Runner` owns a KV cache: `prefill(ids)` starts a sequence and returns the logits of every prompt
position, `decode(token)` appends one token and returns its logits, `reset()` empties the cache.
Parity, latency and chat all go through this interface, so every target is measured by running its
artifact in its real runtime through its own KV-cache loop. torch is imported only by the reference, so
a runner of a runtime without torch (ONNX Runtime, llama.cpp) also loads in an emulated arm64 Python.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from smolship.errors import SmolshipError


class Runner(ABC):
    name: str = "runner"
    max_seq_len: int = 2048

    @abstractmethod
    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Reset the cache, run `ids`; return float32 logits (len(ids), vocab)."""

    @abstractmethod
    def decode(self, token: int) -> np.ndarray:
        """Append one token at the next position; return float32 logits (vocab,)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the sequence so the next call is a prefill."""

    def close(self) -> None:
        """Release runtime resources (optional)."""

    def _check_room(self, pos: int, n: int) -> None:
        if pos + n > self.max_seq_len:
            raise SmolshipError(
                f"The sequence would reach {pos + n} tokens but this artifact's KV cache holds {self.max_seq_len}.",
                "Use a shorter prompt / fewer new tokens, or re-export with a larger --max-seq-len.",
            )


class ReferenceRunner(Runner):
    """The PyTorch model (exporter.model.Llama, static in-place cache) in fp32 eager mode."""

    name = "reference"

    def __init__(self, model, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = model
        self.max_seq_len = model.max_seq_len
        self.pos = 0

    @classmethod
    def from_source(cls, source, max_seq_len: int = 2048, threads: int | None = None) -> "ReferenceRunner":
        return cls(source.build(max_seq_len=max_seq_len, share_weights=True), threads=threads)  # read-only

    def reset(self) -> None:
        self.pos = 0  # stale cache slots are masked out, so no need to zero them

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.reset()
        self._check_room(0, len(ids))
        logits = self._forward(list(ids), 0)
        self.pos = len(ids)
        return logits[0].numpy()

    def decode(self, token: int) -> np.ndarray:
        self._check_room(self.pos, 1)
        logits = self._forward([token], self.pos)
        self.pos += 1
        return logits[0, -1].numpy()

    def _forward(self, ids: list[int], start: int):
        import torch

        with torch.inference_mode():
            return self.model(torch.tensor([ids], dtype=torch.int64), torch.tensor([start]))

    def logits_rows(self, ids: Sequence[int], rows: np.ndarray, chunk: int = 256) -> np.ndarray:
        """Teacher-forced logits of `rows` (sorted positions) of a long sequence, run `chunk` tokens a call
        through the static cache (the same math as one call), so a 4,096-token context never holds all of
        its (positions, vocab) logits at once: only the rows asked for are kept."""
        self.reset()
        self._check_room(0, len(ids))
        rows = np.asarray(rows, dtype=np.int64)
        out = []
        for start in range(0, len(ids), chunk):
            wanted = rows[(rows >= start) & (rows < start + chunk)]
            logits = self._forward(list(ids[start:start + chunk]), start)[0]
            if len(wanted):
                out.append(logits[wanted - start].numpy().astype(np.float32, copy=False))
        self.pos = len(ids)
        return np.concatenate(out, axis=0) if out else np.zeros((0, self.model.cfg.vocab_size), dtype=np.float32)

    def full_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits of a whole sequence in one call (same math as prefill)."""
        return self.prefill(ids)
