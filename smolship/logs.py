"""Keep library chatter that says nothing about the user's model out of the terminal."""

from __future__ import annotations

import logging
import os

# torchao logs "Failed to load ..._C_cutlass_90a.so" for its optional CUDA kernels on every CPU-only
# import, and torch warns about torchao's Enum pytree registration: neither concerns a CPU export.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")
COREMLTOOLS_NOTICES = ("Failed to load _ML", "scikit-learn version", "Torch version")


def quiet_library_logs() -> None:
    """Raise the noisy loggers to ERROR unless SMOLSHIP_DEBUG is set."""
    if os.environ.get("SMOLSHIP_DEBUG", "") not in ("", "0"):
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # coremltools says "Failed to load _MLModelProxy" off macOS: the report already states that the
    # Core ML runtime did not run and why, so drop those lines and keep its other warnings
    # and its version notices about scikit-learn (unused here) and untested torch (the tests cover ours)
    logging.getLogger("coremltools").addFilter(
        lambda record: not str(record.msg).startswith(COREMLTOOLS_NOTICES))
