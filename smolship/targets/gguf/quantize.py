"""llama.cpp's own quantizer, called through its C API (`llama_model_quantize`, via llama-cpp-python).

Used for the k-quant mixtures: llama.cpp picks each tensor's type (Q4_K_M's extra bits for attn_v and
part of ffn_down, its Q8_0 for a tied 576-wide output), falls back to 32-block types where a row is
not a multiple of 256, copies tensors already in the chosen type, and weighs rounding errors by an
importance matrix when one is given. Its log lines are captured so a failure can be reported in full.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from smolship.errors import SmolshipError
from smolship.targets.gguf.plan import ggml_type


class _LogCapture:
    """Route llama.cpp's log to a list while quantizing, then restore llama-cpp-python's own handler."""

    def __init__(self):
        import llama_cpp

        self.lines: list[str] = []
        self._llama_cpp = llama_cpp

        @llama_cpp.llama_log_callback
        def _cb(level, text, user_data):
            self.lines.append(text.decode("utf-8", errors="replace"))

        self._cb = _cb  # keep the ctypes thunk alive while llama.cpp holds it

    def __enter__(self):
        self._llama_cpp.llama_log_set(self._cb, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc):
        from llama_cpp import _logger

        self._llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))

    def tail(self, n: int = 12) -> str:
        return "\n".join("".join(self.lines).strip().splitlines()[-n:])


def _imatrix_array(imatrix: dict[str, np.ndarray]):
    """NULL-terminated llama_model_imatrix_data[]; returns (array, buffers to keep alive)."""
    import llama_cpp

    items = sorted(imatrix.items())
    arr = (llama_cpp.llama_model_imatrix_data * (len(items) + 1))()
    keep = []
    for i, (name, values) in enumerate(items):
        buf = np.ascontiguousarray(values, dtype=np.float32)
        name_b = name.encode()
        keep += [buf, name_b]
        arr[i].name = name_b
        arr[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = buf.size
    arr[len(items)].name = None
    return arr, keep


def _overrides_array(tensor_types: dict[str, str]):
    """NULL-terminated llama_model_tensor_override[] (regex pattern -> ggml type)."""
    import llama_cpp

    arr = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
    keep = []
    for i, (pattern, type_name) in enumerate(tensor_types.items()):
        pat = pattern.encode()
        keep.append(pat)
        arr[i].pattern = pat
        arr[i].type = int(ggml_type(type_name).value)
    arr[len(tensor_types)].pattern = None
    return arr, keep


def llama_quantize(src: Path, dst: Path, ftype: int, *, embedding_type: str | None = None,
                   tensor_types: dict[str, str] | None = None, imatrix: dict[str, np.ndarray] | None = None,
                   threads: int = 0) -> list[str]:
    """Quantize GGUF `src` into `dst` with llama.cpp; returns llama.cpp's log lines."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    params.allow_requantize = True  # a GGUF source's blocks are dequantized by llama.cpp itself
    keep = []
    if embedding_type:
        params.token_embedding_type = params.output_tensor_type = int(ggml_type(embedding_type).value)
    if tensor_types:
        overrides, k = _overrides_array(tensor_types)
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep += [overrides, k]
    if imatrix:
        data, k = _imatrix_array(imatrix)
        params.imatrix = ctypes.cast(data, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep += [data, k]
    with _LogCapture() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        Path(dst).unlink(missing_ok=True)
        raise SmolshipError(f"llama.cpp's quantizer failed (code {rc}) on '{Path(src).name}':\n{log.tail()}",
                            "Check the recipe and ExportOptions.extra (tensor_types / embedding_type), "
                            "or report the log above.")
    return "".join(log.lines).splitlines()
