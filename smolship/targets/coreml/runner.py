"""Drive a Core ML bundle through its real runtime (macOS 15+): MLModel.predict with a stateful KV cache.

The loop is the one swift-transformers' Python reference uses (Examples/Mistral7B/generate.py):
`make_state()` gives fresh ``keyCache``/``valueCache`` states; prefill sends all prompt ids with a
``[1, 1, q, q]`` causal mask; each decode step sends one id with a zero ``[1, 1, 1, past + 1]`` mask.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smolship.runner import Runner
from smolship.targets.coreml import convention as cv

COMPUTE_UNITS_ENV = "SMOLSHIP_COREML_COMPUTE_UNITS"  # CPU_ONLY | CPU_AND_GPU (default) | CPU_AND_NE | ALL
MIN_MACOS = (15, 0)


def runtime_unavailable_reason() -> str | None:
    """None when this machine can execute Core ML stateful models; otherwise why not."""
    if platform.system() != "Darwin":
        return (f"Core ML runs only on macOS 15+; this machine is {platform.system()} {platform.machine()}, so the "
                "Core ML runtime was not run. The figures come from weight_parity: the weights read back out of "
                "the .mlpackage, dequantized as stored, run through the reference graph (and, as fp16_graph, "
                "through the converted graph at fp16 in PyTorch).")
    release = platform.mac_ver()[0] or "0"
    version = tuple(int(x) for x in release.split(".")[:2] if x.isdigit())
    if version < MIN_MACOS:
        return f"Core ML states need macOS 15+; this Mac runs macOS {release}, so the Core ML runtime was not run."
    try:
        import coremltools.libcoremlpython  # noqa: F401  (the binding to the Core ML framework)
    except ImportError as e:
        return f"coremltools cannot reach the Core ML framework on this Mac ({e}); reinstall coremltools."
    return None


class CoreMLRunner(Runner):
    name = "coreml"

    def __init__(self, package: Path, max_seq_len: int, compute_units: str | None = None):
        import coremltools as ct

        units = compute_units or os.environ.get(COMPUTE_UNITS_ENV, "CPU_AND_GPU")
        self.model = ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, units))
        self.compute_units = units
        self.max_seq_len = max_seq_len
        self.state = None
        self.pos = 0

    def reset(self) -> None:
        self.state = self.model.make_state()
        self.pos = 0

    def _predict(self, ids: Sequence[int]) -> np.ndarray:
        q = len(ids)
        feeds = {cv.INPUT_IDS: np.asarray([ids], dtype=np.int32), cv.CAUSAL_MASK: cv.causal_mask(q, self.pos)}
        out = self.model.predict(feeds, state=self.state)
        self.pos += q
        return np.asarray(out[cv.LOGITS], dtype=np.float32)[0]  # (q, vocab)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.reset()
        self._check_room(0, len(ids))
        return self._predict(list(ids))

    def decode(self, token: int) -> np.ndarray:
        if self.state is None:
            raise RuntimeError("decode() before prefill(): call prefill with the prompt first")
        self._check_room(self.pos, 1)
        return self._predict([int(token)])[-1]

    def close(self) -> None:
        self.state = None
        self.model = None
