"""Two edits every ONNX graph rewrite here makes (onnx_ir): add a constant, and splice a chain of new nodes in
place of one node so the rest of the graph, and the graph outputs, see the same value name."""

from __future__ import annotations

import numpy as np


def constant(graph, name: str, array: np.ndarray):
    """Register `array` as initializer `name`; returns its value."""
    import onnx_ir as ir

    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def splice(graph, node, nodes: list) -> None:
    """Insert `nodes` before `node`, hand `node`'s output (its uses and its name) to the last of them, and
    remove `node`."""
    for n in nodes:
        graph.insert_before(node, n)
    old, new = node.outputs[0], nodes[-1].outputs[0]
    name = old.name
    old.replace_all_uses_with(new)
    graph.remove(node, safe=True)
    new.name = name
