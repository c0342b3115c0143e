"""Read a saved .mlpackage back on any OS: its structure, and its weights dequantized exactly as stored.

Core ML executes only on macOS, but the package itself is a protobuf program plus a weight blob that
coremltools parses anywhere. `read_package` loads it as a MIL program; every weight op is turned back
into the dense tensor Core ML would materialise (fp16 consts -> fp32; ``constexpr_*`` ops through
coremltools' own decompression), under its state-dict name. `check_structure` verifies what an app
relies on: the two states and their shapes, the flexible input ranges, the metadata, and that every
weight the recipe compresses is stored compressed while RoPE tables and norms stay fp16.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from smolship.targets.coreml import convention as cv
from smolship.targets.coreml.naming import mil_base, param_of

MODEL_FILE = "model.mlpackage"


@dataclass
class StoredWeight:
    value: np.ndarray | None  # float32, dense, as Core ML materialises it (None when read with dense=False)
    op_type: str  # const | constexpr_blockwise_shift_scale | constexpr_lut_to_dense | ...
    storage: str  # e.g. "fp16", "uint4 [1, 32] + fp16 offset", "4-bit LUT"


@dataclass
class Package:
    spec: object  # Model_pb2.Model
    weights: dict[str, StoredWeight] = field(default_factory=dict)  # state-dict name -> weight
    tables: dict[str, StoredWeight] = field(default_factory=dict)  # other large consts (RoPE tables)


def _storage(op) -> str:
    if op.op_type == "const":
        return {np.float16: "fp16", np.float32: "fp32"}.get(op.outputs[0].val.dtype.type, str(op.outputs[0].val.dtype))
    if op.op_type == "constexpr_blockwise_shift_scale":
        from coremltools.converters.mil.mil import types

        data, scale = op.data, op.scale
        block = [int(d // s) for d, s in zip(data.shape, scale.shape)]
        off = "" if op.offset is None else f" + {types.builtin_to_string(op.offset.dtype)} offset"
        return f"{types.builtin_to_string(data.dtype)} block {block}{off}"
    if op.op_type == "constexpr_lut_to_dense":
        lut = op.lut.shape  # (*blocks, 2**nbits, vector)
        return f"{int(np.log2(lut[-2]))}-bit LUT x{int(np.prod(lut[:-2]))}"
    return op.op_type


def _dense(op) -> np.ndarray:
    value = op.outputs[0].val if op.op_type == "const" else op.materialized_val_inference()
    return np.asarray(value, dtype=np.float32)


def read_package(path: Path, params, dense: bool = True) -> Package:
    """Parse `path` (a .mlpackage) and find every weight named in `params` (state-dict names);
    `dense` also dequantizes each one (a 1.7B model's fp32 copy is 7 GB: structure checks skip it)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.models.utils import _convert_model_spec_to_pymil_prog

    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    prog = _convert_model_spec_to_pymil_prog(mlmodel, spec.specificationVersion, milproto.load)
    by_base = {mil_base(p): p for p in params}
    pkg = Package(spec=spec)
    for op in prog.functions["main"].operations:
        if not (op.op_type == "const" or op.op_type.startswith("constexpr_")):
            continue
        children = op.outputs[0].child_ops
        if not children or all(c.op_type.startswith("constexpr_") for c in children):
            continue  # an input of another constexpr (scale, offset, lut) or unused
        param = param_of(op.name, by_base)
        if param is not None:
            pkg.weights[param] = StoredWeight(_dense(op) if dense else None, op.op_type, _storage(op))
        elif "rope" in op.name:
            pkg.tables[op.name] = StoredWeight(_dense(op), op.op_type, _storage(op))
    missing = sorted(set(params) - set(pkg.weights))
    if missing:
        raise ValueError(f"{path}: weights not found in the package: {missing[:5]} ({len(missing)} in all)")
    return pkg


def state_dict(pkg: Package) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(w.value) for name, w in pkg.weights.items()}


def _range(feature) -> list[list[int]]:
    arr = feature.type.multiArrayType
    return [[int(r.lowerBound), int(r.upperBound)] for r in arr.shapeRange.sizeRanges]


def describe_io(spec) -> dict:
    """Inputs (with their ranges), outputs and states (with their shapes) as plain data."""
    from coremltools.proto.FeatureTypes_pb2 import ArrayFeatureType

    names = {"FLOAT16": "fp16", "FLOAT32": "fp32", "INT32": "int32", "DOUBLE": "fp64"}
    dt = {v: names.get(k, k.lower()) for k, v in ArrayFeatureType.ArrayDataType.items()}
    desc = spec.description
    return {
        "inputs": {f.name: {"dtype": dt.get(f.type.multiArrayType.dataType), "ranges": _range(f)} for f in desc.input},
        "outputs": [f.name for f in desc.output],
        "states": {s.name: {"dtype": dt.get(s.type.stateType.arrayType.dataType),
                            "shape": list(s.type.stateType.arrayType.shape)} for s in desc.state},
        "metadata": dict(desc.metadata.userDefined),
        "specification_version": spec.specificationVersion,
    }


def check_structure(pkg: Package, cfg, max_seq_len: int, compressed: dict[str, str]) -> list[str]:
    """Problems found (empty = fine). `compressed` = {param: scheme} the recipe asked for."""
    problems = []
    io = describe_io(pkg.spec)
    want_state = list(cv.cache_shape(cfg, max_seq_len))
    for name in cv.STATES:
        got = io["states"].get(name)
        if got is None:
            problems.append(f"state '{name}' is missing (states: {list(io['states'])})")
        elif got["shape"] != want_state or got["dtype"] != "fp16":
            problems.append(f"state '{name}' is {got['dtype']} {got['shape']}, expected fp16 {want_state}")
    ids, mask = io["inputs"].get(cv.INPUT_IDS), io["inputs"].get(cv.CAUSAL_MASK)
    if ids is None or ids["dtype"] != "int32" or ids["ranges"] != [[1, 1], [1, max_seq_len]]:
        problems.append(f"input '{cv.INPUT_IDS}' is {ids}, expected int32 with ranges [[1, 1], [1, {max_seq_len}]]")
    want_mask = [[1, 1], [1, 1], [1, max_seq_len], [1, max_seq_len]]
    if mask is None or mask["dtype"] != "fp16" or mask["ranges"] != want_mask:
        problems.append(f"input '{cv.CAUSAL_MASK}' is {mask}, expected fp16 with ranges {want_mask}")
    if io["outputs"] != [cv.LOGITS]:
        problems.append(f"outputs are {io['outputs']}, expected ['{cv.LOGITS}']")
    if cv.META_NAME not in io["metadata"]:
        problems.append(f"metadata key '{cv.META_NAME}' is missing")
    if io["specification_version"] < 9:
        problems.append(f"specification version {io['specification_version']} < 9 (iOS18 is needed for states)")
    for name, w in pkg.weights.items():
        if name in compressed and w.op_type == "const":
            problems.append(f"'{name}' should be stored as {compressed[name]} but is a plain {w.storage} const")
        elif name in compressed and compressed[name].split()[0] != w.storage.split()[0]:  # "uint4", "int8", "4-bit"
            problems.append(f"'{name}' should be stored as {compressed[name]} but is {w.storage}")
        if name not in compressed and (w.op_type != "const" or w.storage != "fp16"):
            problems.append(f"'{name}' should be fp16 but is stored as {w.storage}")
    if len(pkg.tables) != 2:
        problems.append(f"expected the two RoPE tables as consts, found {sorted(pkg.tables)}")
    for name, t in pkg.tables.items():
        if t.op_type != "const" or t.storage != "fp16":
            problems.append(f"RoPE table '{name}' is stored as {t.storage}; it must stay fp16")
    return problems


def summary(pkg: Package) -> dict:
    """Counts of weight ops by storage, for the manifest."""
    counts: dict[str, int] = {}
    for w in pkg.weights.values():
        key = f"{w.op_type}: {w.storage}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
