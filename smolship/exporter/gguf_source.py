"""Read a Llama GGUF file (llama.cpp's format) with gguf-py: config, dequantized fp32 weights, tokenizer.

The raw quantized blocks stay reachable through `GGUFFile.raw` so the GGUF target can copy a tensor
bit for bit when its requested type equals its source type.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smolship.errors import SmolshipError
from smolship.exporter.config import LlamaConfig
from smolship.exporter.naming import gguf_to_ours, unpermute_qk
from smolship.exporter.tokenizer import ChatTokenizer, tokenizer_from_gguf_fields

GGUF_MAGIC = b"GGUF"


@dataclass
class GGUFFile:
    path: Path
    fields: dict
    tensors: dict  # GGUF name -> gguf.ReaderTensor

    def raw(self, gguf_name: str):
        return self.tensors[gguf_name]


def _bad_gguf(path: Path, why: str) -> SmolshipError:
    return SmolshipError(
        f"'{path}' is not a readable GGUF file: {why}.",
        "Check that the download finished (compare its size and sha256 with the source) or re-export it "
        "with llama.cpp's convert_hf_to_gguf.py.",
    )


# GGUF value types (gguf-py's GGUFValueType) -> struct format; 8 = string, 9 = array
_SCALAR_FORMAT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_SCALAR_BYTES = {k: struct.calcsize(f) for k, f in _SCALAR_FORMAT.items()}
_STRING, _ARRAY = 8, 9
MAX_ARRAY = 1 << 20  # metadata array elements: vocabularies and merges are ~10^5
MAX_DIMS = 4  # GGML_MAX_DIMS


@dataclass
class GGUFHeader:
    scalars: dict  # metadata key -> number or string (arrays are only counted)
    array_lengths: dict
    tensor_names: list


def prescan_gguf(path: Path) -> GGUFHeader:
    """Walk the header with every length checked against the file before gguf-py parses it.

    gguf-py reads arrays one element at a time and reads past the end as empty, so an array that claims
    2^60 elements makes it loop (and allocate) forever; found by tests/fuzz (corpus/gguf/crash-*).
    The scalars it returns are enough for a config (preflight), without gguf-py's slower full parse."""
    size = os.path.getsize(path)
    header = GGUFHeader({}, {}, [])
    with open(path, "rb") as f:
        def take(n: int) -> bytes:
            b = f.read(n)
            if len(b) != n:
                raise ValueError("the header is truncated")
            return b

        def skip(n: int, what: str) -> None:
            if n > size - f.tell():
                raise ValueError(f"{what} claims {n} bytes, past the end of the file")
            f.seek(n, 1)

        def text(what: str) -> str:
            n = u64()
            if n > size - f.tell():
                raise ValueError(f"{what} claims {n} bytes, past the end of the file")
            return take(n).decode("utf-8", "replace")

        u32 = lambda: struct.unpack("<I", take(4))[0]  # noqa: E731
        u64 = lambda: struct.unpack("<Q", take(8))[0]  # noqa: E731

        def value(kind: int, key: str, in_array: bool = False) -> None:
            if kind in _SCALAR_BYTES and not in_array:
                header.scalars[key] = struct.unpack(_SCALAR_FORMAT[kind], take(_SCALAR_BYTES[kind]))[0]
            elif kind == _STRING and not in_array:
                header.scalars[key] = text(f"metadata '{key}'")
            elif kind == _STRING:
                skip(u64(), f"a string in metadata '{key}'")
            elif kind == _ARRAY and not in_array:
                item, n = u32(), u64()
                header.array_lengths[key] = n
                if n > MAX_ARRAY:
                    raise ValueError(f"metadata '{key}' claims an array of {n} elements (at most {MAX_ARRAY})")
                if item in _SCALAR_BYTES:
                    skip(n * _SCALAR_BYTES[item], f"metadata '{key}'")
                elif item == _STRING:
                    if 8 * n > size - f.tell():
                        raise ValueError(f"metadata '{key}' claims {n} strings, past the end of the file")
                    for _ in range(n):
                        value(_STRING, key, True)
                else:
                    raise ValueError(f"metadata '{key}' is an array of value type {item}")
            else:
                raise ValueError(f"metadata '{key}' has value type {kind}")

        take(4)
        version = u32()
        if version not in (2, 3):
            raise ValueError(f"it is GGUF version {version}; versions 2 and 3 are read")
        n_tensors, n_kv = u64(), u64()
        if 12 * n_kv + 24 * n_tensors > size:
            raise ValueError(f"it claims {n_kv} metadata keys and {n_tensors} tensors, more than {size} bytes hold")
        for _ in range(n_kv):
            key = text("a metadata key")
            value(u32(), key)
        for _ in range(n_tensors):
            name = text("a tensor name")
            header.tensor_names.append(name)
            dims = u32()
            if not 1 <= dims <= MAX_DIMS:
                raise ValueError(f"tensor '{name}' has {dims} dimensions (1..{MAX_DIMS})")
            elements = 1
            for d in struct.unpack(f"<{dims}Q", take(8 * dims)):
                elements *= d  # Python ints: no overflow
            if elements > 8 * size:  # every GGML type takes more than one bit per element
                raise ValueError(f"tensor '{name}' claims {elements} elements, more than a {size}-byte file holds")
            take(12)
    return header


def peek_config(path: Path) -> LlamaConfig:
    """The config of a GGUF file from its header alone (milliseconds, where gguf-py takes seconds)."""
    try:
        h = prescan_gguf(path)
    except ValueError as e:
        raise _bad_gguf(path, str(e)) from None
    fields = {**h.scalars, "tokenizer.ggml.tokens": range(h.array_lengths.get("tokenizer.ggml.tokens", 0))}
    return config_from_gguf(GGUFFile(Path(path), fields, dict.fromkeys(h.tensor_names)))


def open_gguf(path: Path) -> GGUFFile:
    """Parse header, metadata and tensor table; reject truncated or foreign files with a clear error."""
    import gguf

    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise _bad_gguf(path, f"it starts with {magic!r}, not the GGUF magic b'GGUF'")
    try:
        prescan_gguf(path)
    except ValueError as e:
        raise _bad_gguf(path, str(e)) from None
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as e:  # gguf-py raises ValueError/IndexError/struct errors on corrupt headers
        raise _bad_gguf(path, f"the header could not be parsed ({type(e).__name__}: {e})") from None
    size = os.path.getsize(path)
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise _bad_gguf(path, f"tensor '{t.name}' ends at byte {end} but the file has only {size} bytes (truncated)")
    fields = {}
    for key, field in reader.fields.items():
        try:
            fields[key] = field.contents()
        except Exception:
            raise _bad_gguf(path, f"metadata key '{key}' is malformed") from None
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
        raise _bad_gguf(g.path, f"the metadata key or tensor {e} is missing") from None
    except Exception as e:  # wrong types, shapes or values deep in the metadata: name them, never crash
        raise _bad_gguf(g.path, f"{type(e).__name__}: {str(e)[:200]}") from None


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
