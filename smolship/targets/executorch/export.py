"""export -> lower to XNNPACK -> serialize: the ExecuTorch half of the chain, one function per step.

The program follows the contract of ExecuTorch's LLM runner (extension/llm/runner, used by the
Android and iOS demo apps), so the `.pte` drops into them unchanged:

* ``forward(tokens int64[1, n], input_pos int64[1]) -> logits float32[1, n, V]`` with ``n`` dynamic
  in ``[1, max_seq_len]`` (prefill in one call, decode with n = 1);
* the KV cache is a set of mutable buffers inside the program (ExecuTorch keeps them across
  ``execute`` calls of one loaded method);
* constant methods the runner reads at load time (`constant_methods`).

The graph is captured with non-strict `torch.export` (3x faster than strict on this model; the
program's logits are checked against the eager model in the tests).
"""

from __future__ import annotations

import collections
import warnings

import torch
from torch import nn

XNNPACK = "XnnpackBackend"
# Graph bookkeeping that is not a kernel call at runtime.
_NOT_KERNELS = ("getitem", "executorch_call_delegate", "_assert_scalar", "sym_size", "sym_constrain_range",
                "_local_scalar_dense")


def constant_methods(tokenizer, vocab_size: int, max_seq_len: int, max_prefill_len: int) -> dict:
    """What ExecuTorch's LLM runner reads from the program before it runs anything.

    get_max_seq_len bounds the tokens of one forward call (the runner prefills longer prompts in
    chunks of it); get_max_context_len is the KV-cache size.
    """
    eos_ids = list(tokenizer.stop_ids)
    meta = {
        "get_max_seq_len": max_prefill_len,
        "get_max_context_len": max_seq_len,
        "get_vocab_size": vocab_size,
        "get_eos_ids": eos_ids,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": False,
        "enable_dynamic_shape": True,
    }
    if tokenizer.bos_id is not None:
        meta["get_bos_id"] = int(tokenizer.bos_id)
    return meta


def export_graph(module: nn.Module, max_prefill_len: int):
    """torch.export with a dynamic token dimension n in [1, max_prefill_len].

    The bound sizes the planned activation memory (logits alone are n x vocab x 4 bytes: 50 MB at
    256 tokens, 400 MB at 2048), so it is the prefill chunk, not the cache length.
    """
    from torch.export import Dim, export

    n = min(3, max_prefill_len)
    example = (torch.zeros((1, n), dtype=torch.int64), torch.tensor([0], dtype=torch.int64))
    dynamic = ({1: Dim("n", min=1, max=max_prefill_len)}, None)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return export(module, example, dynamic_shapes=dynamic, strict=False)


def lower_to_xnnpack(ep, methods: dict):
    """Delegate everything XNNPACK takes (fp32 and dynamically quantized linears, elementwise ops);
    the rest stays on ExecuTorch's kernels (custom ops, quantized embedding, reductions)."""
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    from smolship.targets.executorch.partition import lean_xnnpack_passes, xnnpack_partitioner

    with warnings.catch_warnings(), lean_xnnpack_passes():
        warnings.simplefilter("ignore", FutureWarning)
        return to_edge_transform_and_lower(
            ep, partitioner=[xnnpack_partitioner()], constant_methods=methods,
            compile_config=EdgeCompileConfig(_check_ir_validity=False))


def check_delegated(counts: dict) -> None:
    """Every linear must run inside XNNPACK (partition.WholeLinearPartitioner keeps them whole, so one
    it did not claim would fall to a slow portable kernel): fail the export rather than ship that."""
    left = {op: n for op, n in counts["non_delegated_op_types"].items() if op in ("linear", "mm", "addmm", "bmm")}
    if left:
        raise RuntimeError(f"matrix multiplies left outside XNNPACK: {left}; the program would run them on "
                           "ExecuTorch's portable kernels")


def to_pte_bytes(edge) -> bytes:
    """Serialize; quant fusion turns dequantize+embedding into ``quantized_decomposed::embedding_*``."""
    from executorch.exir import ExecutorchBackendConfig
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "mutable buffers start uninitialised": the cache is written before it is read
        prog = edge.to_executorch(ExecutorchBackendConfig(
            extract_delegate_segments=True,
            do_quant_fusion_and_const_prop=True,
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
        ))
    return prog.buffer, prog


def _op_name(node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.replace("aten.", "").split(".")[0] if "." in name else name


def op_counts(program) -> dict:
    """Kernel calls of the final program: inside XNNPACK delegates vs. left to ExecuTorch's kernels."""
    from executorch.exir.lowered_backend_module import get_lowered_backend_modules

    gm = program.exported_program().graph_module
    portable = collections.Counter()
    for node in gm.graph.nodes:
        if node.op == "call_function":
            name = _op_name(node)
            if not any(skip in str(node.target) for skip in _NOT_KERNELS):
                portable[name] += 1
    delegated = collections.Counter()
    n_delegates = 0
    for lowered in get_lowered_backend_modules(gm):
        n_delegates += 1
        for node in lowered.original_module.graph_module.graph.nodes:
            if node.op == "call_function" and "getitem" not in str(node.target):
                delegated[_op_name(node)] += 1
    return {
        "xnnpack_delegates": n_delegates,
        "xnnpack_ops": sum(delegated.values()),
        "non_delegated_ops": sum(portable.values()),
        "xnnpack_op_types": dict(delegated.most_common()),
        "non_delegated_op_types": dict(portable.most_common()),
    }
