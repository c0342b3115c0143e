"""Source model -> fp16 stateful Core ML mlprogram (iOS18), in swift-transformers' I/O convention.

The chain: exporter.model.Llama at ``max_seq_len`` holding the source's own tensors -> wrap it
(stateful.StatefulLlama) ->
``torch.jit.trace`` with a 2-token query after 3 past tokens -> ``ct.convert`` with
``inputIds [1, q]`` and ``causalMask [1, 1, m, past+q]`` (q, m and past+q each a RangeDim 1..max_seq_len:
swift-transformers sends m = 1 with the whole prompt, see stateful.py), so one model serves prefill and decode, the two caches as fp16 ``ct.StateType`` states, and fp16
compute. Compression (quantize.py) happens afterwards on the MIL program.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from smolship.exporter.model import CacheMode, Llama
from smolship.targets.coreml import convention as cv
from smolship.targets.coreml.stateful import StatefulLlama


def borrowed_model(source, max_seq_len: int) -> Llama:
    """An eval Llama whose parameters ARE the source's tensors (no copy): converting a 1.7B model
    then holds one fp32 copy of the weights instead of two."""
    return Llama.with_weights(source.config, source.state_dict, max_seq_len, CacheMode.EXPLICIT)


def trace(source, max_seq_len: int):
    """The traced wrapper (TorchScript), ready for ct.convert."""
    model = borrowed_model(source, max_seq_len)
    wrapper = StatefulLlama(model).eval()
    example = (torch.zeros((1, 2), dtype=torch.int32), torch.zeros((1, 1, 2, 5), dtype=torch.float32))
    with torch.no_grad():
        return torch.jit.trace(wrapper, example, check_trace=False)


def convert(source, max_seq_len: int):
    """Trace and convert `source`; returns an fp16 MLModel (not loaded: conversion works off macOS)."""
    import coremltools as ct

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    traced = trace(source, max_seq_len)
    query = ct.RangeDim(lower_bound=1, upper_bound=max_seq_len, default=1)
    mask_rows = ct.RangeDim(lower_bound=1, upper_bound=max_seq_len, default=1)  # q, or 1 (broadcast)
    total = ct.RangeDim(lower_bound=1, upper_bound=max_seq_len, default=1)
    shape = cv.cache_shape(source.config, max_seq_len)
    mlmodel = ct.convert(
        traced,
        inputs=[ct.TensorType(shape=(1, query), dtype=np.int32, name=cv.INPUT_IDS),
                ct.TensorType(shape=(1, 1, mask_rows, total), dtype=np.float16, name=cv.CAUSAL_MASK)],
        outputs=[ct.TensorType(dtype=np.float16, name=cv.LOGITS)],
        states=[ct.StateType(wrapped_type=ct.TensorType(shape=shape, dtype=np.float16), name=name)
                for name in cv.STATES],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS18,
        compute_precision=ct.precision.FLOAT16,
        skip_model_load=True,
    )
    del traced
    return mlmodel


def hub_name(source) -> str:
    """What swift-transformers should resolve config/tokenizer from (`co.huggingface.exporters.name`)."""
    if source.source.get("kind") == "hub":
        return source.source["ref"]
    return cv.KNOWN_HUB_IDS.get(source.name, source.name)


def describe(mlmodel, source, recipe, max_seq_len: int) -> None:
    """Model description and the metadata swift-transformers and huggingface/exporters read."""
    import coremltools as ct

    mlmodel.short_description = (f"{source.name} ({recipe.name}: {recipe.description}), stateful KV cache, "
                                 f"context {max_seq_len}; exported by smolship")
    mlmodel.author = "smolship"
    mlmodel.version = ct.__version__
    mlmodel.input_description[cv.INPUT_IDS] = "Token ids [1, query]; query 1..max_seq_len (prefill or one decode step)"
    mlmodel.input_description[cv.CAUSAL_MASK] = ("Additive fp16 mask [1, 1, query, past + query]: 0 = attend, "
                                                 "-inf = masked; its last dim tells the model how many tokens are cached")
    mlmodel.output_description[cv.LOGITS] = "Next-token logits [1, query, vocab]"
    meta = {
        cv.META_NAME: hub_name(source),
        cv.META_TASK: "text-generation",
        cv.META_ARCHITECTURE: "LlamaForCausalLM",
        cv.META_FRAMEWORK: "pytorch",
        cv.META_PRECISION: recipe.name,
        cv.SMOLSHIP_PREFIX + "recipe": recipe.name,
        cv.SMOLSHIP_PREFIX + "max_seq_len": str(max_seq_len),
        cv.SMOLSHIP_PREFIX + "source": source.name,
    }
    mlmodel.user_defined_metadata.update(meta)
