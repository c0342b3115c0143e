"""Rewrite a float decoder graph into block-quantized weights by a small rule table.

`QuantPlan.rules` (`quant.rules.Rule`, the rule type every target uses) map weight names (regex, first match
wins) to a `BlockQuant` or None (keep float). Every MatMul whose B is a 2-D float initializer is looked up;
the token embedding's Gather follows `QuantPlan.embedding`. When the embedding is tied to the lm_head
and both get the same config, the Gather reads the lm_head's quantized bytes: one 8-bit copy serves both,
and a decode step gathers one quantized row instead of dequantizing the table.

Two ways to write a quantized matmul (`QuantPlan.standard_ops`):
* standard ops (the default): ``DequantizeLinear(codes (K, N) int4/uint4/int8, scales, zero points,
  axis 0, block_size) -> MatMul``. Native ONNX Runtime (and so onnxruntime-genai and transformers.js on
  Node) fuses the pair into MatMulNBits at load (accuracy level 4, the same kernel and numbers as below);
  onnxruntime-web's WASM build has no fast MatMulNBits (10-20x slower than fp32 MatMul,
  bench-results/wasm_matmul.json), so a browser page opens the file with ``session.disable_quant_qdq=1``
  and ORT folds each DequantizeLinear into an fp32 weight once, at load.
  The tied embedding gathers rows of the head's codes with standard ops. ORT fuses a DequantizeLinear only
  when nothing else reads its codes (an unfused head is folded to fp32: 4x the bytes a decode step reads),
  so the gather reads an alias initializer (`QuantReport.aliases`) that export.save_model points at the
  same bytes of the external-data file: one copy on disk, two names in the graph.
* ``MatMulNBits`` / ``GatherBlockQuantized`` contrib ops directly: for what the fusion cannot express (an
  accuracy level other than 4, a 4-bit tied table).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from smolship.targets.onnx.blockquant import BlockQuant, Quantized, quantize_matrix, quantize_weight
from smolship.exporter.calibration import Calibration
from smolship.targets.onnx.graph_edit import constant, splice
from smolship.quant.rules import Rule, first_match

MS_DOMAIN = "com.microsoft"
EMBEDDING = "embed_tokens"


@dataclass(frozen=True)
class QuantPlan:
    rules: tuple[Rule, ...]  # scheme: a BlockQuant or None
    embedding: BlockQuant | None = None
    accuracy_level: int = 4  # MatMulNBits: 4 = int8 activations (the fast CPU kernel)
    standard_ops: bool = True  # DequantizeLinear + MatMul (fused to MatMulNBits by native ORT); False: contrib ops
    # A rule's wider config gives way to this one where this one's error is no larger: the default model's Q4_1
    # layers keep their 4-bit offset grid instead of being re-rounded onto 8-bit symmetric blocks.
    narrower: BlockQuant | None = None

    def config_for(self, name: str) -> BlockQuant | None:
        return first_match(self.rules, name, None)

    def needs_calibration(self) -> tuple[bool, bool]:
        """(importance, hessian) needed by any rule."""
        needs = [r.scheme.needs for r in self.rules if r.scheme is not None]
        return any(i for i, _ in needs), any(h for _, h in needs)


@dataclass
class QuantReport:
    matmuls: dict[str, str] = field(default_factory=dict)  # weight -> "int4 b32 asym mse"
    embedding: str = "float"
    weight_error: dict[str, float] = field(default_factory=dict)  # relative RMS error per weight
    aliases: dict[str, str] = field(default_factory=dict)  # initializer -> the one whose bytes it shares

    def as_info(self) -> dict:
        counts: dict[str, int] = {}
        for desc in self.matmuls.values():
            counts[desc] = counts.get(desc, 0) + 1
        return {"matmul_weights": counts, "embedding": self.embedding,
                "worst_weight_rel_rms": dict(sorted(self.weight_error.items(), key=lambda kv: -kv[1])[:5])}


def describe(cfg: BlockQuant) -> str:
    return f"int{cfg.bits} b{cfg.block_size} {'sym' if cfg.symmetric else 'asym'} {cfg.method}"


def quantize_model(model, plan: QuantPlan, calib: Calibration | None = None, tied: bool = False,
                   progress=None) -> QuantReport:
    """Rewrite `model` (onnx_ir.Model) in place; returns what was done."""
    import onnx_ir as ir

    graph = model.graph
    graph.opset_imports.setdefault(MS_DOMAIN, 1)
    if plan.standard_ops:  # blocked DequantizeLinear and 4-bit types: opset 21
        graph.opset_imports[""] = max(graph.opset_imports.get("", 21), 21)
        model.opset_imports[""] = graph.opset_imports[""]
    tied = tied and _is_tied(graph)
    report = QuantReport()
    matmuls = [n for n in graph if n.op_type == "MatMul" and _weight(n.inputs[1]) is not None]
    done: dict[str, tuple[BlockQuant, dict]] = {}
    for i, node in enumerate(matmuls):
        w_value = node.inputs[1]
        cfg = plan.config_for(w_value.name)
        if cfg is None:
            continue
        w = _weight(w_value)
        k, n = w.shape
        a = node.inputs[0]
        imp = calib.importance.get(w_value.name) if calib else None
        hes = calib.hessian.get(w_value.name) if calib else None
        qz, p, effective = quantize_matrix(w, cfg, imp, hes)
        error = _rel_rms(w, effective)
        if plan.narrower is not None and cfg.bits > plan.narrower.bits and w_value.name != "lm_head":
            # more bits only where they lower the error: a Q4_1 source's blocks are held better by the 4-bit
            # offset grid (rel. RMS 0.0055) than by 8-bit symmetric blocks of 64 (0.006-0.007); off the grid 0.075 vs ~0.006
            narrow = quantize_matrix(w, plan.narrower, imp, hes)
            narrow_error = _rel_rms(w, narrow[2])
            if narrow_error <= error:
                cfg, (qz, p, effective), error = plan.narrower, narrow, narrow_error
        if p is not None:
            a, k = _append_block_sums(graph, node, a, p, w_value.name), k + p.shape[1]
        if plan.standard_ops:
            names = _add_dequantize_inputs(graph, w_value.name, qz, cfg)
            dq = ir.node("DequantizeLinear", [graph.initializers[x] for x in names.values() if x],  # no empty
                         # trailing zero point: ORT's DQ -> MatMulNBits fusion then skips the node
                         attributes={"axis": 0, "block_size": cfg.block_size}, name=f"{w_value.name}/DequantizeLinear")
            dq.outputs[0].name = f"{w_value.name}.dequantized"
            graph.insert_before(node, dq)
            new = ir.node("MatMul", [a, dq.outputs[0]], name=node.name or None)
        else:
            names = _add_quantized(graph, w_value.name, qz, cfg)
            new = ir.node("MatMulNBits", [a, *[graph.initializers[x] for x in names.values() if x]],
                          attributes={"K": k, "N": n, "bits": cfg.bits, "block_size": cfg.block_size,
                                      "accuracy_level": plan.accuracy_level},
                          domain=MS_DOMAIN, name=node.name.replace("MatMul", "MatMulNBits") or None)
        _replace(graph, node, new)
        if not w_value.uses() and not w_value.is_graph_output():
            # free the float weight now, not at the end: at 1.7B the fp32 matrices are 6.4 GB, and
            # holding them beside their quantized forms peaked at 23.7 GB
            del graph.initializers[w_value.name]
        report.matmuls[w_value.name] = describe(cfg)
        report.weight_error[w_value.name] = error
        done[w_value.name] = (cfg, names)  # not the codes: 1 byte per weight we no longer need
        if progress:
            progress(f"quantize {w_value.name}", (i + 1) / len(matmuls))
    if plan.embedding is not None:
        if plan.standard_ops:
            report.embedding = _dequantized_embedding(graph, plan.embedding, done, tied, report.aliases)
        else:
            report.embedding = _quantize_embedding(graph, plan.embedding, done, tied)
    _drop_unused_initializers(graph)
    return report


def _is_tied(graph) -> bool:
    """The lm_head initializer (h, V) is the transposed embedding (V, h), value for value."""
    emb, head = graph.initializers.get(EMBEDDING), graph.initializers.get("lm_head")
    if emb is None or head is None:
        return False
    a, b = _weight(emb), _weight(head)
    return a is not None and b is not None and a.shape == b.shape[::-1] and np.array_equal(a, b.T)


def _weight(value) -> np.ndarray | None:
    if value is None or not value.is_initializer() or value.const_value is None:
        return None
    arr = value.const_value
    if len(arr.shape) != 2 or arr.dtype.name not in ("FLOAT", "FLOAT16"):
        return None
    return arr.numpy().astype(np.float32)


def _add_quantized(graph, base: str, qz: Quantized, cfg: BlockQuant) -> dict[str, str | None]:
    names = {"B": f"{base}.q{cfg.bits}", "scales": f"{base}.scales",
             "zero_points": f"{base}.zero_points" if qz.zero_points is not None else None}
    arrays = {"B": qz.packed, "scales": qz.scales, "zero_points": qz.zero_points}
    for key, name in names.items():
        if name:
            constant(graph, name, arrays[key])
    return names


def _add_dequantize_inputs(graph, base: str, qz: Quantized, cfg: BlockQuant) -> dict[str, str | None]:
    """DequantizeLinear's inputs for W (K, N), blocks of `cfg.block_size` along K (axis 0).

    Symmetric grids (MatMulNBits' implied zero point 2**(bits-1)) become signed codes with no zero-point
    tensor; asymmetric ones unsigned codes with per-block unsigned zero points of the same width."""
    import ml_dtypes

    n = qz.q.shape[0]
    q = qz.q.reshape(n, -1).t()  # (K, N) unsigned codes
    zp = qz.zp.reshape(n, -1).t()  # (K/bs, N)
    if cfg.symmetric:
        narrow = ml_dtypes.int4 if cfg.bits == 4 else np.int8
        codes, zeros = (q.to(torch.int16) - 2 ** (cfg.bits - 1)).numpy().astype(narrow), None
    else:
        narrow = ml_dtypes.uint4 if cfg.bits == 4 else np.uint8
        codes, zeros = q.numpy().astype(narrow), zp.round().numpy().astype(narrow)
    arrays = {"x": codes, "x_scale": np.ascontiguousarray(qz.scales.T), "x_zero_point": zeros}
    names = {"x": f"{base}.q{cfg.bits}", "x_scale": f"{base}.scales",
             "x_zero_point": f"{base}.zero_points" if zeros is not None else None}
    for key, name in names.items():
        if name:
            constant(graph, name, np.ascontiguousarray(arrays[key]))
    return names


def _append_block_sums(graph, node, a, p: np.ndarray, base: str):
    """x (.., K) -> concat(x, x @ P) (.., K + bs): the extra block that carries the offsets r."""
    import onnx_ir as ir

    name = f"block_sums_{p.shape[0]}x{p.shape[1]}"  # one 0/1 matrix per shape, shared by all layers
    if name not in graph.initializers:
        constant(graph, name, p)
    sums = ir.node("MatMul", [a, graph.initializers[name]], name=f"{base}/BlockSums")
    cat = ir.node("Concat", [a, sums.outputs[0]], attributes={"axis": -1}, name=f"{base}/AppendBlockSums")
    graph.insert_before(node, sums)
    graph.insert_before(node, cat)
    return cat.outputs[0]


def _replace(graph, old, new) -> None:
    import onnx_ir as ir

    out_old, out_new = old.outputs[0], new.outputs[0]
    out_new.name = out_old.name
    out_new.shape, out_new.type = out_old.shape, out_old.type
    ir.convenience.replace_nodes_and_values(graph, old, [old], [new], [out_old], [out_new])


def _rel_rms(w: np.ndarray, effective: np.ndarray) -> float:
    d = effective - w
    return round(float(np.sqrt((d * d).mean() / max((w * w).mean(), 1e-30))), 5)


def _quantize_embedding(graph, cfg: BlockQuant, done: dict, tied: bool) -> str:
    """Gather(embed_tokens) -> GatherBlockQuantized, sharing the lm_head's bytes when tied."""
    import onnx_ir as ir

    gathers = [n for n in graph if n.op_type == "Gather" and n.inputs[0] is not None
               and n.inputs[0].name == EMBEDDING and n.inputs[0].is_initializer()]
    if not gathers:
        return "float (no embedding Gather found)"
    node = gathers[0]
    emb = _weight(node.inputs[0])
    vocab = emb.shape[0]
    shared = tied and "lm_head" in done and done["lm_head"][0] == cfg
    if shared:
        _, names = done["lm_head"]
    else:
        qz = quantize_weight(emb.T, cfg)
        names = _add_quantized(graph, EMBEDDING, qz, cfg)
    data = graph.initializers[names["B"]]
    shape = constant(graph, f"{EMBEDDING}.rows_shape", np.array([vocab, -1], dtype=np.int64))
    reshape = ir.node("Reshape", [data, shape], name="embed_tokens/Reshape")  # (V, kb, blob) -> (V, kb*blob)
    inputs = [reshape.outputs[0], node.inputs[1], graph.initializers[names["scales"]]]
    if names["zero_points"]:
        inputs.append(graph.initializers[names["zero_points"]])  # (V, packed blocks) suits both ops
    new = ir.node("GatherBlockQuantized", inputs,
                  attributes={"bits": cfg.bits, "block_size": cfg.block_size, "gather_axis": 0, "quantize_axis": 1},
                  domain=MS_DOMAIN, name="embed_tokens/GatherBlockQuantized")
    graph.insert_before(node, reshape)
    _replace(graph, node, new)
    return describe(cfg) + (" (shared with lm_head)" if shared else "")


def _dequantized_embedding(graph, cfg: BlockQuant, done: dict, tied: bool, aliases: dict) -> str:
    """Gather(embed_tokens) -> rows of symmetric codes (K, V) dequantized with standard ops.

    Gather(codes, ids, axis 1) (K, B, T) -> (B, T, K/bs, bs) float * the gathered scales (B, T, K/bs, 1)
    -> (B, T, K). Tied and quantized alike, the codes and scales are aliases of the lm_head's (same bytes)."""
    import onnx_ir as ir

    if not cfg.symmetric or cfg.bits != 8:
        raise ValueError("a standard-ops embedding is 8-bit symmetric (4-bit tables need GatherBlockQuantized)")
    gathers = [n for n in graph if n.op_type == "Gather" and n.inputs[0] is not None
               and n.inputs[0].name == EMBEDDING and n.inputs[0].is_initializer()]
    if not gathers:
        return "float (no embedding Gather found)"
    node = gathers[0]
    emb = _weight(node.inputs[0])  # (V, K)
    hidden = emb.shape[1]
    shared = tied and "lm_head" in done and done["lm_head"][0] == cfg
    if shared:
        head = done["lm_head"][1]
        names = {}
        for key in ("x", "x_scale"):
            alias = f"{EMBEDDING}.{head[key].split('.', 1)[1]}"  # embed_tokens.q8 / embed_tokens.scales
            graph.register_initializer(ir.Value(name=alias, const_value=graph.initializers[head[key]].const_value))
            aliases[alias] = head[key]
            names[key] = alias
    else:
        names = _add_dequantize_inputs(graph, EMBEDDING, quantize_weight(emb.T, cfg), cfg)

    def const(suffix: str, array: np.ndarray):
        return constant(graph, f"{EMBEDDING}.{suffix}", array)

    ids = node.inputs[1]
    codes = ir.node("Gather", [graph.initializers[names["x"]], ids], attributes={"axis": 1}, name="embed_tokens/codes")
    code_rows = ir.node("Transpose", [codes.outputs[0]], attributes={"perm": [1, 2, 0]}, name="embed_tokens/code_rows")
    as_float = ir.node("Cast", [code_rows.outputs[0]], attributes={"to": ir.DataType.FLOAT}, name="embed_tokens/cast")
    blocks = ir.node("Reshape", [as_float.outputs[0], const("blocks_shape", np.array([0, 0, -1, cfg.block_size],
                                                                                    dtype=np.int64))],
                     name="embed_tokens/blocks")  # (B, T, K/bs, bs)
    scale_cols = ir.node("Gather", [graph.initializers[names["x_scale"]], ids], attributes={"axis": 1},
                         name="embed_tokens/scale_cols")  # (K/bs, B, T)
    scale_rows = ir.node("Transpose", [scale_cols.outputs[0]], attributes={"perm": [1, 2, 0]},
                         name="embed_tokens/scale_rows")
    scales = ir.node("Unsqueeze", [scale_rows.outputs[0], const("scale_axis", np.array([-1], dtype=np.int64))],
                     name="embed_tokens/scale_unsqueeze")
    scaled = ir.node("Mul", [blocks.outputs[0], scales.outputs[0]], name="embed_tokens/scale")
    out = ir.node("Reshape", [scaled.outputs[0], const("rows_shape", np.array([0, 0, hidden], dtype=np.int64))],
                  name="embed_tokens/rows")  # (B, T, K)
    splice(graph, node, [codes, code_rows, as_float, blocks, scale_cols, scale_rows, scales, scaled, out])
    return describe(cfg) + (" (shared with lm_head)" if shared else "")


def _drop_unused_initializers(graph) -> None:
    for name in [n for n, v in graph.initializers.items() if not v.uses() and not v.is_graph_output()]:
        del graph.initializers[name]
