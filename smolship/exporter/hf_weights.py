"""Read Hugging Face weight files safely: safetensors (header checked), or pickle with weights_only=True."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from smolship.errors import SmolshipError
from smolship.exporter.naming import hf_to_ours

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


# bytes per element of the safetensors dtypes a checkpoint's weights can use
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def check_safetensors_header(path: Path) -> dict:
    """Validate the JSON header against the file size before any library maps the file: every tensor's
    dtype, shape and byte range must agree, so a header claiming 10^12 elements fails here, unallocated."""
    size = os.path.getsize(path)
    bad = lambda why: SmolshipError(  # noqa: E731
        f"'{path}' is not a valid safetensors file: {why}.",
        "Re-download or re-save it (safetensors.torch.save_file); do not rename other formats to .safetensors.",
    )
    if size < 8:
        raise bad(f"it has only {size} bytes")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise bad(f"its header claims {n} bytes but the file has {size}")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, or nested too deep
            raise bad(f"its header is not JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(header, dict):
        raise bad(f"its header is a JSON {type(header).__name__}, not an object")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise bad(f"tensor '{name}' has no dtype/shape/data_offsets entry")
        offsets, shape, dtype = info.get("data_offsets"), info.get("shape"), info.get("dtype")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise bad(f"tensor '{name}' has no valid data_offsets")
        start, end = offsets
        if not (0 <= start <= end <= data_len):
            raise bad(f"tensor '{name}' claims bytes {start}..{end} but only {data_len} data bytes exist")
        if dtype not in DTYPE_BYTES:
            raise bad(f"tensor '{name}' has dtype {str(dtype)[:20]!r}, not one of {', '.join(DTYPE_BYTES)}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise bad(f"tensor '{name}' has no valid shape")
        elements = 1
        for d in shape:  # Python ints: no overflow, and nothing is allocated
            elements *= d
        if elements * DTYPE_BYTES[dtype] != end - start:
            raise bad(f"tensor '{name}' claims {elements} {dtype} elements but {end - start} bytes")
    return header


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors_header(path)
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError) as e:
        raise SmolshipError(f"'{path}' could not be read as safetensors ({e}).",
                            "Re-download or re-save the file with safetensors.") from None


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise SmolshipError(
            f"'{path}' is a pickle checkpoint that does not load with weights_only=True ({type(e).__name__}).",
            "smolship never unpickles arbitrary objects: convert the checkpoint to safetensors and pass that instead.",
        ) from None
    if not isinstance(obj, dict):
        raise SmolshipError(f"'{path}' does not hold a state dict.", "Save the model's state_dict as safetensors.")
    return obj


def read_weights(folder: Path, files: list[Path] | None = None) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """All weight tensors of a folder (or the given files), keyed by our parameter names, in fp32."""
    if files is None:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                files = [folder / Path(n).name for n in names]  # never outside the folder
            except (ValueError, RecursionError, KeyError, TypeError, AttributeError) as e:
                raise SmolshipError(f"'{index}' is malformed ({type(e).__name__}).",
                                    "Re-download the model folder.") from None
        else:
            files = sorted(folder.glob("*.safetensors")) or sorted(
                p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not files:
        raise SmolshipError(f"No weight files (*.safetensors) in '{folder}'.",
                            "Pass a folder that holds model.safetensors beside config.json.")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise SmolshipError(f"Weight file '{f}' is missing.", "Re-download the model folder.")
        part = _read_safetensors(f) if f.suffix == ".safetensors" else _read_pickle(f)
        state.update({hf_to_ours(k): v.float() for k, v in part.items() if not k.endswith("rotary_emb.inv_freq")})
    return state, files
