"""Read a Llama GGUF file (llama.cpp's format) with gguf-py: config, dequantized fp32 weights, tokenizer.

The raw quantized blocks stay reachable through `GGUFFile.raw` so the GGUF target can copy a tensor
bit for bit when its requested type equals its source type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smolship.errors import SmolshipError
from smolship.exporter.config import LlamaConfig
from smolship.exporter.gguf_header import bad_gguf, read_header
from smolship.exporter.naming import gguf_to_ours, unpermute_qk
from smolship.exporter.tokenizer import ChatTokenizer, tokenizer_from_gguf_fields


@dataclass
class GGUFFile:
    path: Path
    fields: dict
    tensors: dict  # GGUF name -> gguf.ReaderTensor

    def raw(self, gguf_name: str):
        return self.tensors[gguf_name]


def peek_config(path: Path) -> LlamaConfig:
    """The config of a GGUF file from its header alone (milliseconds, where gguf-py takes seconds)."""
    h = read_header(path)
    fields = {**h.scalars, "tokenizer.ggml.tokens": range(h.array_lengths.get("tokenizer.ggml.tokens", 0))}
    return config_from_gguf(GGUFFile(Path(path), fields, dict.fromkeys(h.tensor_names)))


def open_gguf(path: Path) -> GGUFFile:
    """Parse header, metadata and tensor table; reject truncated or foreign files with a clear error."""
    import gguf

    path = Path(path)
    read_header(path)  # bounded first: gguf-py loops forever on an array that claims 2^60 elements
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # gguf-py raises ValueError/IndexError/struct errors on corrupt headers
        raise bad_gguf(path, f"the header could not be parsed ({type(e).__name__}: {e})") from None
    size = os.path.getsize(path)
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise bad_gguf(path, f"tensor '{t.name}' ends at byte {end} but the file has only {size} bytes (truncated)")
    fields = {}
    for key, field in reader.fields.items():
        try:
            fields[key] = field.contents()
        except Exception:
            raise bad_gguf(path, f"metadata key '{key}' is malformed") from None
    return GGUFFile(path=path, fields=fields, tensors={t.name: t for t in reader.tensors})


def config_from_gguf(g: GGUFFile) -> LlamaConfig:
    arch = g.fields.get("general.architecture")
    if arch != "llama":
        raise SmolshipError(
            f"'{g.path.name}' holds a '{arch}' model; smolship exports Llama-architecture decoders only.",
            "Pass a Llama-architecture GGUF (SmolLM2, Llama, TinyLlama...).",
        )
    f = g.fields
    heads = f["llama.attention.head_count"]
    hidden = f["llama.embedding_length"]
    vocab = f.get("llama.vocab_size") or len(f["tokenizer.ggml.tokens"])
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=f["llama.feed_forward_length"],
        num_layers=f["llama.block_count"],
        num_heads=heads,
        num_kv_heads=f.get("llama.attention.head_count_kv", heads),
        head_dim=f.get("llama.rope.dimension_count") or hidden // heads,
        rope_theta=float(f.get("llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(f.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        max_position_embeddings=f.get("llama.context_length", 2048),
        tie_word_embeddings="output.weight" not in g.tensors,
    )


def dequantize_tensor(t) -> np.ndarray:
    """Raw GGUF tensor -> fp32 numpy array in PyTorch (out, in) order."""
    import gguf

    arr = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(arr, dtype=np.float32).reshape(tuple(reversed([int(d) for d in t.shape])))


def load_gguf(path: Path) -> tuple[LlamaConfig, dict[str, torch.Tensor], ChatTokenizer, GGUFFile]:
    """Config, fp32 weights and tokenizer of a GGUF file; a malformed file is a SmolshipError, whatever
    part of it is wrong (the fuzz harness tests/fuzz/harnesses.py holds this to account)."""
    g = open_gguf(path)
    try:
        cfg = config_from_gguf(g)
        tok = tokenizer_from_gguf_fields(g.fields)
        return cfg, _read_tensors(g, cfg), tok, g
    except (SmolshipError, MemoryError):
        raise
    except KeyError as e:
        raise bad_gguf(g.path, f"the metadata key or tensor {e} is missing") from None
    except Exception as e:  # wrong types, shapes or values deep in the metadata: name them, never crash
        raise bad_gguf(g.path, f"{type(e).__name__}: {str(e)[:200]}") from None


def _read_tensors(g: GGUFFile, cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, t in g.tensors.items():
        try:
            ours = gguf_to_ours(name)
        except KeyError:
            continue  # e.g. rope_freqs: recomputed from the config
        w = dequantize_tensor(t)
        if name.endswith("attn_q.weight"):
            w = unpermute_qk(w, cfg.num_heads)
        elif name.endswith("attn_k.weight"):
            w = unpermute_qk(w, cfg.num_kv_heads)
        state[ours] = torch.from_numpy(np.array(w, dtype=np.float32, copy=True))
    return state
