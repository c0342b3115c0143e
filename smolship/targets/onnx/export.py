"""torch.onnx (dynamo) export of the decoder into an onnx_ir model with readable initializer names.

One graph serves prefill (any prompt length) and decode: the prompt length T and the past / total
lengths are dynamic dimensions, so the same file runs with onnxruntime-genai's shared KV buffer
(past = max_seq_len slots) and with transformers.js' growing cache (past starts at 0 slots). The result
stays an `onnx_ir.Model` (no 2 GB protobuf limit) until `save_model` writes it, with external data
(`<file>_data`, the name transformers.js fetches) when the weights pass `EXTERNAL_DATA_BYTES`.

Bundle layout (`onnx/<file>` as transformers.js names them by dtype, `ONNX_FILES`): genai_config.json
points at the same file, so one folder serves onnxruntime-genai, ONNX Runtime and transformers.js.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

from smolship.exporter.model import CacheMode
from smolship.targets.onnx.graph_model import ExplicitDecoder, FusedDecoder, io_names, weight_name
from smolship.targets.onnx.recipes import GRAPHS

ONNX_DIR = "onnx"  # transformers.js looks for its decoders in this sub-folder
MODEL_FILE = "model.onnx"
# recipe -> (transformers.js dtype, file name); the suffixes are transformers.js' DEFAULT_DTYPE_SUFFIX_MAPPING
ONNX_FILES = {"fp32": ("fp32", "model.onnx"), "fp16": ("fp16", "model_fp16.onnx"),
              "int8": ("q8", "model_quantized.onnx"), "int4": ("q4", "model_q4.onnx")}
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB; leave room for the graph itself


def build_module(source, graph: str, max_seq_len: int, dtype: torch.dtype = torch.float32,
                 smooth: dict | None = None, materialize_lm_head: bool = True) -> torch.nn.Module:
    """The nn.Module to export: FusedDecoder (ORT contrib ops) or ExplicitDecoder (standard ops)."""
    if graph == "fused":
        module = FusedDecoder(source.config, source.state_dict, max_seq_len, smooth=smooth,
                              materialize_lm_head=materialize_lm_head)
    elif graph == "plain":
        module = ExplicitDecoder(source.build(max_seq_len=max_seq_len, cache_mode=CacheMode.EXPLICIT))
    else:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    return module.to(dtype).eval()


def example_inputs(cfg, graph: str, max_seq_len: int, dtype: torch.dtype) -> tuple:
    """Example (input_ids, attention_mask, *past) with distinct sizes so no dimension specialises."""
    t, p = 3, 5
    past_len = max_seq_len if graph == "fused" else p  # fused: the shared buffer is always max_seq_len long
    past = [torch.zeros(1, cfg.num_kv_heads, past_len, cfg.head_dim, dtype=dtype) for _ in range(2 * cfg.num_layers)]
    if graph == "fused":
        past = [torch.randn_like(x) for x in past]
    return (torch.randint(0, cfg.vocab_size, (1, t)), torch.ones(1, p + t, dtype=torch.int64), *past)


def dynamic_shapes(cfg, graph: str) -> tuple:
    """Per-argument dims; the varargs past is one list entry (torch.export sees it as a tuple)."""
    seq = torch.export.Dim("sequence_length", max=8192)
    total = torch.export.Dim("total_sequence_length", max=16384)
    if graph == "fused":
        past_dim = {2: torch.export.Dim("past_buffer_length", max=16384)}
        return ({1: seq}, {1: total}, tuple([past_dim] * (2 * cfg.num_layers)))
    past_dim = {2: torch.export.Dim("past_sequence_length", max=16384)}
    return ({1: seq}, {1: total}, tuple([past_dim] * (2 * cfg.num_layers)))


def export_onnx(source, graph: str = "fused", max_seq_len: int = 2048, dtype: torch.dtype = torch.float32,
                smooth: dict | None = None, materialize_lm_head: bool = True):
    """Export `source` (a SourceModel) and return an onnx_ir.Model with named inputs/outputs/weights.

    `smooth` (fused graph only): per-channel activation scales folded into the RMSNorm weights and
    the rows of the matrices they feed (graph_model.FusedDecoder), for int8 activations."""
    from smolship.targets.onnx.contrib_ops import translations

    cfg = source.config
    if smooth and graph != "fused":
        raise ValueError("activation smoothing needs the fused graph")
    module = build_module(source, graph, max_seq_len, dtype, smooth, materialize_lm_head)
    inputs, outputs = io_names(cfg.num_layers)
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, example_inputs(cfg, graph, max_seq_len, dtype), dynamo=True, optimize=True,
            input_names=inputs, output_names=outputs, dynamic_shapes=dynamic_shapes(cfg, graph),
            custom_translation_table=translations() if graph == "fused" else None, verbose=False,
        )
    model = program.model
    if graph == "fused":
        _rename_initializers(model, weight_name)
    _name_initializers(model)
    _name_present_dims(model)
    _drop_exporter_metadata(model)
    model.graph.name = f"smolship_{source.name}_{graph}"
    return model


def _rename_initializers(model, rename) -> None:
    """Every initializer named rename(its parameter path)."""
    for old in list(model.graph.initializers):
        new = rename(old)
        if new != old and new not in model.graph.initializers:
            value = model.graph.initializers.pop(old)
            value.name = new
            model.graph.register_initializer(value)


def _name_initializers(model) -> None:
    """Give folded weights (val_123) their module path, e.g. layers.3.qkv_proj, from the node metadata."""
    taken = set(model.graph.initializers)
    for node in model.graph:
        if node.op_type not in ("MatMul", "Gather") or len(node.inputs) < 2:
            continue
        w = node.inputs[1] if node.op_type == "MatMul" else node.inputs[0]
        if w is None or not w.is_initializer() or not w.name.startswith("val_"):
            continue
        scope = node.metadata_props.get("pkg.torch.onnx.name_scopes", "")
        path = _scope_path(scope)
        if path and path not in taken:
            del model.graph.initializers[w.name]
            w.name = path
            model.graph.register_initializer(w)
            taken.add(path)


def _drop_exporter_metadata(model) -> None:
    """torch.onnx annotates every node with its Python stack trace, module path and FX node (172 KB of the
    135M int4 graph): debug data no runtime reads."""
    for node in model.graph:
        for key in [k for k in node.metadata_props if k == "namespace" or k.startswith("pkg.torch.onnx.")]:
            del node.metadata_props[key]


def _name_present_dims(model) -> None:
    """present.N.* are max_seq_len slots long under genai's shared buffer but past + T under a growing
    cache (transformers.js): their own symbol, so the declared shape holds for both clients."""
    import onnx_ir as ir

    for v in model.graph.outputs:
        if v.name.startswith("present.") and v.shape is not None and len(v.shape) == 4:
            dims = list(v.shape)
            dims[2] = ir.SymbolicDim("present_sequence_length")
            v.shape = ir.Shape(dims)


def _scope_path(scope: str) -> str:
    """'["", "layers.0", ...]' -> the last module path the node belongs to."""
    import json

    try:
        names = json.loads(scope)
    except (json.JSONDecodeError, TypeError):
        return ""
    names = [n for n in names if n]
    return names[-1] if names else ""


def save_model(model, folder: Path, force_external: bool = False, file_name: str = MODEL_FILE,
               aliases: dict[str, str] | None = None) -> list[str]:
    """Write folder/file_name (+ file_name + "_data" when large or when `aliases` share bytes); returns the
    file names written. `aliases` (initializer -> source): stored once, the alias pointing at the source's bytes."""
    import onnx_ir as ir

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nbytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if nbytes > EXTERNAL_DATA_BYTES or force_external or aliases:
        data = file_name + "_data"
        held = {name: model.graph.initializers.pop(name) for name in aliases or {}}  # written as references only
        try:
            ir.save(model, folder / file_name, external_data=data, size_threshold_bytes=1024)
        finally:
            for name, value in held.items():
                model.graph.register_initializer(value)
        if held:
            add_aliases(folder / file_name, {name: (value, aliases[name]) for name, value in held.items()})
        return [file_name, data]
    ir.save(ir.external_data.load_to_model(model), folder / file_name)  # inline weights read from another file
    return [file_name]


def add_aliases(path: Path, aliases: dict) -> None:
    """Add to `path` each alias initializer (name -> (its onnx_ir value, source name)) as a reference to the
    external-data bytes of its source: one copy in the data file, two names in the graph.

    ONNX Runtime fuses a DequantizeLinear into MatMulNBits only when nothing else reads its codes; the
    tied embedding's Gather reads the same table under another name."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    sources = {t.name: t for t in proto.graph.initializer}
    for name, (value, source) in aliases.items():
        src = sources[source]
        if src.data_location != onnx.TensorProto.EXTERNAL:
            raise ValueError(f"alias {name}: its source {source} is not in external data")
        tensor = proto.graph.initializer.add()
        tensor.name, tensor.data_type = name, src.data_type
        tensor.dims.extend(value.const_value.shape)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.extend(src.external_data)
    onnx.save(proto, str(path))


class _quiet_exporter:
    """torch.onnx prints progress lines and warnings on every export; keep the CLI output clean."""

    def __enter__(self):
        self._level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        self._devnull = open(os.devnull, "w")
        import contextlib

        self._redirect = contextlib.redirect_stdout(self._devnull)
        self._redirect.__enter__()
        return self

    def __exit__(self, *exc):
        self._redirect.__exit__(*exc)
        self._devnull.close()
        logging.getLogger("torch.onnx").setLevel(self._level)
        return False
