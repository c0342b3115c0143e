"""A `Runner` over executorch.runtime: the `.pte`'s own forward, its own in-program KV cache.

Prefill runs the dynamic-length forward from position 0, in chunks of the program's
``get_max_seq_len`` (one call for prompts up to that bound); decode is one call per token with n = 1. The cache lives in the program's mutable buffers, so `reset()` only rewinds the position:
``custom_sdpa`` reads slots ``<= start_pos + i`` and never sees what a previous sequence left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from smolship.errors import SmolshipError
from smolship.runner import Runner


def load_kernel_libraries() -> None:
    """Register the kernels a smolship `.pte` may call besides XNNPACK and the portable set:
    ``llama::custom_sdpa`` / ``llama::update_cache`` and ``quantized_decomposed::embedding_*``."""
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


def set_threads(threads: int | None) -> None:
    """ExecuTorch's threadpool (XNNPACK and the custom ops use it); None keeps its default."""
    if threads:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(int(threads))


MODEL_FILE = "model.pte"


def open_bundle(bundle: Path, manifest: dict, threads: int | None = None) -> "ExecuTorchRunner":
    """The bundle's program in the executorch installed here (`Target.load_runner` and the runtime host)."""
    return ExecuTorchRunner(Path(bundle) / MODEL_FILE, manifest["max_seq_len"], threads=threads)


class ExecuTorchRunner(Runner):
    name = "executorch"

    def __init__(self, pte: Path, max_seq_len: int | None = None, threads: int | None = None):
        from executorch.runtime import Runtime

        load_kernel_libraries()
        set_threads(threads)
        pte = Path(pte)
        if not pte.is_file():
            raise SmolshipError(f"The ExecuTorch program '{pte}' is missing.", "Re-export the bundle.")
        try:
            self.program = Runtime.get().load_program(pte)
            self.forward = self.program.load_method("forward")
        except Exception as e:  # a corrupt file or a kernel missing from this runtime build
            raise SmolshipError(f"ExecuTorch could not load '{pte}' ({type(e).__name__}: {e}).",
                                "Re-export the bundle with the installed executorch version.") from None
        self.max_prefill_len = int(self.constant("get_max_seq_len")[0])
        self.max_seq_len = int(max_seq_len or self.constant("get_max_context_len")[0])
        self.pos = 0

    def constant(self, name: str):
        """Value of one constant method (get_max_seq_len, get_eos_ids, ...)."""
        return self.program.load_method(name).execute([])

    def method_names(self) -> set[str]:
        return set(self.program.method_names)

    def reset(self) -> None:
        self.pos = 0

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        tokens = torch.tensor([list(ids)], dtype=torch.int64)  # (1, n)
        logits = self.forward.execute([tokens, torch.tensor([self.pos], dtype=torch.int64)])[0]  # (1, n, V)
        self.pos += len(ids)
        return logits[0].numpy()

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.reset()
        if not len(ids):
            raise SmolshipError("prefill() got an empty prompt.", "Pass at least one token id.")
        self._check_room(0, len(ids))
        step = self.max_prefill_len
        chunks = [self._run(ids[i:i + step]) for i in range(0, len(ids), step)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=0)

    def decode(self, token: int) -> np.ndarray:
        self._check_room(self.pos, 1)
        return self._run([int(token)])[0]

    def close(self) -> None:
        self.forward = None
        self.program = None
