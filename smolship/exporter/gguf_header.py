"""The one GGUF header walker: magic, metadata and tensor table, every length bounded by the file size.

gguf-py reads arrays one element at a time and reads past the end as empty, so an array that claims 2^60
elements makes it loop (and allocate) forever; found by tests/fuzz (corpus/gguf/crash-*). Every reader of a
GGUF header goes through `read_header` first: the source loader (gguf_source.py, before gguf-py parses the
file) and the GGUF target's tensor index (targets/gguf/index.py). A malformed header is a SmolshipError.
Format: github.com/ggml-org/ggml/blob/master/docs/gguf.md.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from smolship.errors import SmolshipError

GGUF_MAGIC = b"GGUF"
# GGUF value types (gguf-py's GGUFValueType) -> struct format; 8 = string, 9 = array
_SCALAR_FORMAT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_SCALAR_BYTES = {k: struct.calcsize(f) for k, f in _SCALAR_FORMAT.items()}
_STRING, _ARRAY = 8, 9
MAX_ARRAY = 1 << 20  # metadata array elements: vocabularies and merges are ~10^5
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int  # gguf.GGMLQuantizationType value
    shape: tuple[int, ...]  # GGUF order (ne0 = row length first)
    offset: int  # from the start of the data section


@dataclass
class GGUFHeader:
    scalars: dict  # metadata key -> number or string (arrays are only counted)
    array_lengths: dict
    tensors: list[TensorInfo]
    data_start: int  # absolute offset of the (aligned) data section
    size: int  # of the file

    @property
    def tensor_names(self) -> list[str]:
        return [t.name for t in self.tensors]


def bad_gguf(path: Path, why: str) -> SmolshipError:
    return SmolshipError(
        f"'{path}' is not a readable GGUF file: {why}.",
        "Check that the download finished (compare its size and sha256 with the source) or re-export it "
        "with llama.cpp's convert_hf_to_gguf.py.",
    )


def read_header(path: Path) -> GGUFHeader:
    """The header of `path`, walked with every length checked against the file before it is read."""
    try:
        return _walk(Path(path))
    except ValueError as e:
        raise bad_gguf(path, str(e)) from None


def _walk(path: Path) -> GGUFHeader:
    size = os.path.getsize(path)
    header = GGUFHeader({}, {}, [], 0, size)
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

        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ValueError(f"it starts with {magic!r}, not the GGUF magic b'GGUF'")
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
            dims = u32()
            if not 1 <= dims <= MAX_DIMS:
                raise ValueError(f"tensor '{name}' has {dims} dimensions (1..{MAX_DIMS})")
            shape = struct.unpack(f"<{dims}Q", take(8 * dims))
            if math.prod(shape) > 8 * size:  # Python ints: no overflow; every GGML type takes more than a bit
                raise ValueError(f"tensor '{name}' claims {math.prod(shape)} elements, more than a {size}-byte file holds")
            ggml_type, offset = struct.unpack("<IQ", take(12))
            header.tensors.append(TensorInfo(name, ggml_type, shape, offset))
        alignment = header.scalars.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment is {alignment!r}, not a power of two")
        header.data_start = -(-f.tell() // alignment) * alignment
    return header
