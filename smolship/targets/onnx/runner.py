"""`OnnxRunner`: the bundle's model.onnx in ONNX Runtime, through the same KV-cache loop genai runs.

Fused graphs (GroupQueryAttention) keep one KV buffer per layer of ``max_seq_len`` slots that is bound
as both past and present with IO binding, so a decode step copies no cache and allocates nothing but
the logits - exactly what onnxruntime-genai does with ``past_present_share_buffer: true``. Plain graphs
grow the cache by concatenation and feed it back (``past_present_share_buffer: false``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smolship.runner import Runner

NP_DTYPES = {"float32": np.float32, "float16": np.float16}


# What the web page sets: fold each DequantizeLinear into an fp32 weight at load (onnxruntime-web has no fast
# MatMulNBits) instead of fusing it into MatMulNBits (native ORT's default).
BROWSER_FOLD = {"session.disable_quant_qdq": "1"}


def session_options(threads: int | None = None, optimized_path: Path | None = None, config: dict | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # the CPU EP warns about every node it leaves to the default allocator
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return so


def make_session(model_path: Path, threads: int | None = None, config: dict | None = None,
                 optimized_path: Path | None = None):
    import onnxruntime as ort

    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    return ort.InferenceSession(str(model_path), session_options(threads, optimized_path, config),
                                providers=["CPUExecutionProvider"])


def open_bundle(bundle: Path, manifest: dict, threads: int | None = None, **session) -> "OnnxRunner":
    """The bundle's graph in the onnxruntime installed here, as genai_config.json describes it
    (`Target.load_runner` and the runtime host). `session`: OnnxRunner's session_config / optimized_path."""
    from smolship.targets.onnx.genai_config import read_genai_config

    gc = read_genai_config(bundle)
    dec = gc["model"]["decoder"]
    return OnnxRunner(Path(bundle) / dec["filename"], dec["num_hidden_layers"], dec["num_key_value_heads"],
                      dec["head_size"], gc["model"]["context_length"], gc["search"]["past_present_share_buffer"],
                      kv_dtype=manifest.get("target_info", {}).get("dtype", "float32"), threads=threads, **session)


class OnnxRunner(Runner):
    """Runner over a decoder graph with genai's I/O names; `layout` comes from genai_config.json."""

    name = "onnxruntime"

    def __init__(self, model_path: Path, num_layers: int, num_kv_heads: int, head_dim: int,
                 max_seq_len: int, shared_buffer: bool, kv_dtype: str = "float32", threads: int | None = None,
                 session_config: dict | None = None, optimized_path: Path | None = None):
        import onnxruntime as ort

        self.session = make_session(model_path, threads, session_config, optimized_path)
        self.max_seq_len, self.shared = max_seq_len, shared_buffer
        self.kv_dtype = NP_DTYPES[kv_dtype]
        self.layers = num_layers
        self.kv_shape = (1, num_kv_heads, max_seq_len if shared_buffer else 0, head_dim)
        self.past_names = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
        self.present_names = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
        self._ones = np.ones((1, max_seq_len), dtype=np.int64)
        self._positions = np.arange(max_seq_len, dtype=np.int64)[None]
        self._wants_positions = any(i.name == "position_ids" for i in self.session.get_inputs())  # other exporters' graphs
        self.pos = 0
        if shared_buffer:
            self._buffers = [ort.OrtValue.ortvalue_from_numpy(np.zeros(self.kv_shape, self.kv_dtype))
                             for _ in self.past_names]
            self._binding = self.session.io_binding()
            self._binding.bind_output("logits", "cpu")  # first, so it stays output 0 when re-bound
            for name, buf in zip(self.past_names, self._buffers):
                self._binding.bind_ortvalue_input(name, buf)
            for name, buf in zip(self.present_names, self._buffers):
                self._binding.bind_ortvalue_output(name, buf)
        else:
            self._past = self._empty_past()

    def _empty_past(self) -> list[np.ndarray]:
        return [np.zeros(self.kv_shape, self.kv_dtype) for _ in self.past_names]

    def reset(self) -> None:
        self.pos = 0  # shared buffers: slots past the attention mask are never read
        if not self.shared:
            self._past = self._empty_past()

    def _step(self, ids: np.ndarray) -> np.ndarray:
        total = self.pos + ids.shape[1]
        mask = self._ones[:, :total]
        if self.shared:
            b = self._binding
            b.bind_cpu_input("input_ids", ids)
            b.bind_cpu_input("attention_mask", mask)
            if self._wants_positions:
                b.bind_cpu_input("position_ids", self._positions[:, self.pos:total])
            b.bind_output("logits", "cpu")
            self.session.run_with_iobinding(b)
            logits = b.get_outputs()[0].numpy()
        else:
            feeds = {"input_ids": ids, "attention_mask": mask, **dict(zip(self.past_names, self._past))}
            if self._wants_positions:
                feeds["position_ids"] = self._positions[:, self.pos:total]
            logits, *self._past = self.session.run(["logits", *self.present_names], feeds)
        self.pos = total
        return logits[0].astype(np.float32, copy=False)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.reset()
        self._check_room(0, len(ids))
        return self._step(np.asarray([list(ids)], dtype=np.int64))

    def decode(self, token: int) -> np.ndarray:
        self._check_room(self.pos, 1)
        return self._step(np.asarray([[token]], dtype=np.int64))[-1]

    def close(self) -> None:
        self._binding = None
        self._buffers = None
        self.session = None
