"""Greedy decoding in onnxruntime-genai's own loop: what an app built on its Generator runs.

One place for it, because tests (the app-drop-in check, the int8 agreement check) and the JS-clients
benchmark all compare other clients against exactly this loop.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def load_model(folder: Path, threads: int | None = None):
    """An og.Model over a genai folder, optionally pinned to `threads` intra-op threads."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    if threads:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def greedy(model, ids: list[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
    """(new token ids, perf_counter stamp of each) until genai's own stop (eos from genai_config) or the limit."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(list(ids))
    tokens, stamps = [], []
    while not gen.is_done() and len(tokens) < max_new_tokens:
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
        stamps.append(time.perf_counter())
    return tokens, stamps
