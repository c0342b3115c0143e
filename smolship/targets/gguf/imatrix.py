"""An importance matrix for llama.cpp's quantizer, measured on the PyTorch reference.

llama.cpp's imatrix is, per weight matrix, the mean over calibration tokens of the squared input
activation of each column (``E[x_j^2]``, one value per input feature); its quantizers then minimise
``sum_j E[x_j^2] (w_j - q_j)^2`` instead of plain rounding error. The same numbers come from forward
pre-hooks on the reference model's linears (the shared collector, `quant.stats.collect`), so no llama.cpp
`imatrix` run is needed. The values do not depend on Q/K row permutation (they index input columns, not rows).
"""

from __future__ import annotations

import numpy as np
import torch

from smolship.errors import SmolshipError
from smolship.exporter.model import CacheMode
from smolship.exporter.naming import ours_to_gguf
from smolship.quant.stats import collect

CHUNK = 512  # tokens per reference forward, as llama.cpp's imatrix tool uses
DEFAULT_TOKENS = 2048  # 1024 to 8192 gave the same kld_mean on the 135M (0.035-0.037, within noise)
MIN_TOKENS = 64


def calibration_chunks(source, text: str | None, max_tokens: int = DEFAULT_TOKENS):
    """Token chunks to calibrate on (a CalibrationSet: sequences and the record every manifest keeps), by the
    one calibration policy (exporter.calibration.calibration_set): `text` if given, else held-out eval documents."""
    from smolship.exporter.calibration import calibration_set

    cal = calibration_set(source, text, max_tokens, doc_tokens=CHUNK)
    if cal.record["tokens"] < MIN_TOKENS:
        raise SmolshipError(f"The calibration text is {cal.record['tokens']} tokens; the importance matrix needs at least {MIN_TOKENS}.",
                            "Pass a longer ExportOptions.calibration_text, or none to use the built-in eval set.")
    return cal


def importance_matrix(source, chunks: list[list[int]]) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 [in_features] mean squared input activation, from the shared collector
    (quant.stats.collect, on one torch thread: on a busy 2-core machine two spinning OpenMP threads made this
    18x slower, 107 s vs 6 s for the same 800 tokens)."""
    model = source.build(max_seq_len=max(len(c) for c in chunks), cache_mode=CacheMode.BUFFERS)
    inputs = {}
    for ours, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            key = f"{ours}.weight"
            if key == "lm_head.weight" and source.config.tie_word_embeddings:
                key = "embed_tokens.weight"  # llama.cpp records the tied lm_head under token_embd
            inputs[ours_to_gguf(key)] = ours
    return {name: v.numpy() for name, v in collect(model, chunks, inputs).importance.items()}
