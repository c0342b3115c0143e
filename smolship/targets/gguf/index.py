"""A fast read of a GGUF file's tensor table (name, type, shape, data offset), skipping the metadata.

gguf-py's GGUFReader builds a numpy view for every one of the ~150k vocabulary strings (seconds per
file); checking what was written only needs the tensor table, so this walks the header with `struct`
(format: github.com/ggml-org/ggml/blob/master/docs/gguf.md).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# GGUF metadata value types -> fixed byte size (8 = string, 9 = array are variable)
SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY, UINT32 = 8, 9, 4
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class TensorEntry:
    name: str
    type: str  # ggml type name
    shape: tuple[int, ...]  # GGUF order (ne0 = row length first)
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        vals = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals[0] if len(vals) == 1 else vals

    def string(self) -> str:
        n = self.take("Q")
        s = bytes(self.buf[self.pos: self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def skip_value(self, vtype: int) -> None:
        if vtype == STRING:
            n = self.take("Q")
            self.pos += n
        elif vtype == ARRAY:
            itype, n = self.take("I"), self.take("Q")
            if itype in SCALAR_SIZES:
                self.pos += SCALAR_SIZES[itype] * n
            else:
                for _ in range(n):
                    self.skip_value(itype)
        else:
            self.pos += SCALAR_SIZES[vtype]


def tensor_table(path: Path) -> list[TensorEntry]:
    import gguf

    with open(path, "rb") as f:
        data = np.memmap(f, dtype=np.uint8, mode="r")
    c = _Cursor(memoryview(data))
    if bytes(data[:4]) != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    c.pos = 4
    _version, n_tensors, n_kv = c.take("I"), c.take("Q"), c.take("Q")
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key, vtype = c.string(), c.take("I")
        if key == "general.alignment" and vtype == UINT32:
            alignment = c.take("I")
        else:
            c.skip_value(vtype)
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        n_dims = c.take("I")
        shape = tuple(c.take("Q") for _ in range(n_dims))
        ttype, offset = c.take("I"), c.take("Q")
        infos.append((name, gguf.GGMLQuantizationType(ttype), shape, offset))
    start = (c.pos + alignment - 1) // alignment * alignment
    out = []
    for name, qtype, shape, offset in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(shape)) // block * type_size
        out.append(TensorEntry(name, qtype.name, shape, start + offset, nbytes))
    return out


def tensor_bytes(path: Path, entry: TensorEntry) -> np.ndarray:
    return np.memmap(path, dtype=np.uint8, mode="r", offset=entry.offset, shape=(entry.nbytes,))
