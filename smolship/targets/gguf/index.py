"""A fast read of a GGUF file's tensor table (name, type, shape, data offset), skipping the metadata.

gguf-py's GGUFReader builds a numpy view for every one of the ~150k vocabulary strings (seconds per
file); checking what was written only needs the tensor table. The header is walked by the one bounded
walker (exporter/gguf_header.py), and every tensor's bytes must lie inside the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smolship.exporter.gguf_header import bad_gguf, read_header


@dataclass(frozen=True)
class TensorEntry:
    name: str
    type: str  # ggml type name
    shape: tuple[int, ...]  # GGUF order (ne0 = row length first)
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


def tensor_table(path: Path) -> list[TensorEntry]:
    """Every tensor of `path`; a malformed header or a tensor past the end of the file is a SmolshipError."""
    import gguf

    header = read_header(path)
    out = []
    for t in header.tensors:
        try:
            qtype = gguf.GGMLQuantizationType(t.ggml_type)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise bad_gguf(path, f"tensor '{t.name}' has unknown ggml type {t.ggml_type}") from None
        if t.shape[0] % block:
            raise bad_gguf(path, f"tensor '{t.name}' rows of {t.shape[0]} are not whole {qtype.name} blocks of {block}")
        start, nbytes = header.data_start + t.offset, math.prod(t.shape) // block * type_size
        if start + nbytes > header.size:
            raise bad_gguf(path, f"tensor '{t.name}' ends at byte {start + nbytes} but the file has only "
                                 f"{header.size} bytes (truncated)")
        out.append(TensorEntry(t.name, qtype.name, t.shape, start, nbytes))
    return out


def tensor_bytes(path: Path, entry: TensorEntry) -> np.ndarray:
    return np.memmap(path, dtype=np.uint8, mode="r", offset=entry.offset, shape=(entry.nbytes,))
