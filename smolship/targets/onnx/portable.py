"""Keep the quantized graph inside what onnxruntime-web's WASM build implements.

onnxruntime-web (1.31 dev, what transformers.js 4.3 bundles) has no kernel for the 8-bit
``GatherBlockQuantized`` that quantize.py emits for the token embedding shared with the lm_head
("Could not find an implementation for GatherBlockQuantized(1)"), so a browser cannot open the bundle.
`portable_embedding` rewrites that one node into standard ops over the same bytes:
``Gather(codes) -> Cast -> Sub(zero point) -> Mul(Gather(scales))``. The file holds one copy of the
weights as before, native ONNX Runtime computes the same values (only the one gathered row per token is
dequantized), and every ONNX runtime can run it.
"""

from __future__ import annotations

import numpy as np

from smolship.targets.onnx.graph_edit import constant, splice

MS_DOMAIN = "com.microsoft"


def portable_embedding(model) -> int:
    """Rewrite 8-bit GatherBlockQuantized nodes in place; returns how many were rewritten.

    4-bit tables (packed nibbles) are left as they are: they need the contrib op."""
    import onnx_ir as ir

    graph = model.graph
    done = 0
    for node in [n for n in graph if n.op_type == "GatherBlockQuantized" and n.domain == MS_DOMAIN]:
        attrs = {k: a.value for k, a in node.attributes.items()}
        if attrs.get("bits", 4) != 8 or attrs.get("gather_axis", 0) != 0 or attrs.get("quantize_axis", 1) != 1:
            continue
        block = int(attrs["block_size"])
        data, ids, scales = node.inputs[:3]
        zeros = node.inputs[3] if len(node.inputs) > 3 else None
        name = node.name or "embedding"

        def const(suffix: str, array: np.ndarray):
            return constant(graph, f"{name}.{suffix}", array)

        codes = ir.node("Gather", [data, ids], attributes={"axis": 0}, name=f"{name}/codes")  # (B, T, H) uint8
        as_float = ir.node("Cast", [codes.outputs[0]], attributes={"to": ir.DataType.FLOAT}, name=f"{name}/cast")
        nodes = [codes, as_float]
        if zeros is None:  # MatMulNBits' default zero point for unsigned 8-bit codes
            zero = const("zero_point", np.array(128.0, dtype=np.float32))
        else:
            zg = ir.node("Gather", [zeros, ids], attributes={"axis": 0}, name=f"{name}/zero_rows")  # (B, T, H/b)
            zc = ir.node("Cast", [zg.outputs[0]], attributes={"to": ir.DataType.FLOAT}, name=f"{name}/zero_cast")
            zu = ir.node("Unsqueeze", [zc.outputs[0], const("last_axis", np.array([-1], dtype=np.int64))],
                         name=f"{name}/zero_unsqueeze")
            nodes += [zg, zc, zu]
            zero = zu.outputs[0]
        blocks = ir.node("Reshape", [as_float.outputs[0], const("blocks_shape", np.array([0, 0, -1, block], dtype=np.int64))],
                         name=f"{name}/blocks")  # (B, T, H/b, b)
        centered = ir.node("Sub", [blocks.outputs[0], zero], name=f"{name}/center")
        srows = ir.node("Gather", [scales, ids], attributes={"axis": 0}, name=f"{name}/scale_rows")  # (B, T, H/b)
        sexp = ir.node("Unsqueeze", [srows.outputs[0], const("scale_axis", np.array([-1], dtype=np.int64))],
                       name=f"{name}/scale_unsqueeze")
        scaled = ir.node("Mul", [centered.outputs[0], sexp.outputs[0]], name=f"{name}/scale")
        out = ir.node("Reshape", [scaled.outputs[0], const("rows_out_shape", np.array([0, 0, -1], dtype=np.int64))],
                      name=f"{name}/rows")  # (B, T, H)
        splice(graph, node, nodes + [blocks, centered, srows, sexp, scaled, out])
        done += 1
    return done
