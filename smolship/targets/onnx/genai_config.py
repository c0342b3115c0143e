"""The client configs of an ONNX bundle: genai_config.json (onnxruntime-genai) and config.json (transformers.js).

genai_config.json's keys follow onnxruntime-genai's model builder (models/builders/base.py,
make_genai_config), so the folder loads in genai's Python API and its Android / iOS apps unchanged.
Our OnnxRunner reads the same file, so smolship's validation and genai drive the graph with the same
cache layout. config.json is a transformers LlamaConfig plus "transformers.js_config" (the dtype that
selects onnx/model_<suffix>.onnx, external data chunks), which transformers.js v4 needs to load the
same folder (browser and Node) with no copy.
"""

from __future__ import annotations

import json
from pathlib import Path

GENAI_CONFIG = "genai_config.json"


def genai_config(source, model_file: str, max_seq_len: int, shared_buffer: bool) -> dict:
    cfg, tok = source.config, source.tokenizer
    stops = tok.stop_ids
    return {
        "model": {
            "bos_token_id": tok.bos_id if tok.bos_id is not None else tok.eos_id,
            "context_length": max_seq_len,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file,
                "head_size": cfg.head_dim,
                "hidden_size": cfg.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": cfg.num_heads,
                "num_hidden_layers": cfg.num_layers,
                "num_key_value_heads": cfg.num_kv_heads,
            },
            "eos_token_id": stops if len(stops) > 1 else tok.eos_id,
            "pad_token_id": tok.pad_id if tok.pad_id is not None else tok.eos_id,
            "type": "llama",
            "vocab_size": cfg.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": max_seq_len,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": shared_buffer,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def write_genai_config(folder: Path, config: dict) -> str:
    (Path(folder) / GENAI_CONFIG).write_text(json.dumps(config, indent=4))
    return GENAI_CONFIG


def read_genai_config(folder: Path) -> dict:
    return json.loads((Path(folder) / GENAI_CONFIG).read_text())


HF_CONFIG = "config.json"


def transformers_js_config(source, dtype: str, model_file: str, external_data: bool) -> dict:
    """config.json for transformers.js: the model's HF config, its special ids and the default dtype."""
    tok = source.tokenizer
    stops = tok.stop_ids
    tjs: dict = {"dtype": dtype}
    if external_data:
        tjs["use_external_data_format"] = {Path(model_file).name: 1}  # one chunk: <file>.onnx_data
    return {
        **source.config.to_hf(),
        "bos_token_id": tok.bos_id,
        "eos_token_id": stops if len(stops) > 1 else tok.eos_id,
        "pad_token_id": tok.pad_id if tok.pad_id is not None else tok.eos_id,
        "use_cache": True,
        "transformers.js_config": tjs,
    }


def write_hf_config(folder: Path, config: dict) -> str:
    (Path(folder) / HF_CONFIG).write_text(json.dumps(config, indent=2))
    return HF_CONFIG
