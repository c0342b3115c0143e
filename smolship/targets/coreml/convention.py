"""The I/O convention of huggingface/swift-transformers' stateful language models, as data.

swift-transformers (Sources/Models/LanguageModel.swift, `LanguageModelWithStatefulKVCache`) loads a
Core ML model as a stateful LM when it has the states ``keyCache`` and ``valueCache``, feeds
``inputIds`` (int32, ``[1, query]``, query length flexible) and ``causalMask`` (fp16, additive,
``[1, 1, query, past + query]``), and reads ``logits`` (``[1, query, vocab]``). Its context range
is read from the range of the last axis of ``inputIds``. Its reference export
(Examples/Mistral7B/export.py) stacks the cache as ``[layers, 1, kv_heads, max_seq, head_dim]``
and derives the number of past tokens from the mask: ``past = causalMask.shape[-1] - query``.
The model name for tokenizer/config look-ups comes from the ``co.huggingface.exporters.name``
metadata key (huggingface/exporters writes the other ``co.huggingface.exporters.*`` keys).
"""

from __future__ import annotations

import numpy as np

INPUT_IDS = "inputIds"
CAUSAL_MASK = "causalMask"
KEY_CACHE = "keyCache"
VALUE_CACHE = "valueCache"
LOGITS = "logits"
STATES = (KEY_CACHE, VALUE_CACHE)

META_PREFIX = "co.huggingface.exporters."
META_NAME = META_PREFIX + "name"
META_TASK = META_PREFIX + "task"
META_ARCHITECTURE = META_PREFIX + "architecture"
META_FRAMEWORK = META_PREFIX + "framework"
META_PRECISION = META_PREFIX + "precision"
SMOLSHIP_PREFIX = "co.smolship."  # our own facts (recipe, max_seq_len) beside the exporters keys

# The hub id a Swift app should resolve config/tokenizer from, for sources whose id we know.
KNOWN_HUB_IDS = {"SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def cache_shape(cfg, max_seq_len: int) -> tuple[int, int, int, int, int]:
    """Shape of each stacked state: (layers, batch 1, kv_heads, max_seq, head_dim)."""
    return (cfg.num_layers, 1, cfg.num_kv_heads, max_seq_len, cfg.head_dim)


def causal_mask(query_len: int, past_len: int) -> np.ndarray:
    """The additive fp16 mask ``[1, 1, query, past + query]``: 0 where a query may look, -inf above."""
    mask = np.zeros((1, 1, query_len, past_len + query_len), dtype=np.float16)
    future = np.triu(np.ones((query_len, query_len), dtype=bool), k=1)  # (q, q): key j > query i
    mask[0, 0, :, past_len:][future] = -np.inf
    return mask
