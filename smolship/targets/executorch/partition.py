"""The XNNPACK partitioner, taught one more linear: int8 weights with float activations.

XNNPACK has ``fully_connected_nc_f32_qc8w`` (fp32 activations x per-channel int8 weights), but
ExecuTorch 1.5's ``LinearConfig`` only knows fp32, statically quantized and dynamically quantized
linears. A weight-only linear (``dequantize(weight) -> linear`` with a float input) is classified
as "static quant", rejected for lacking an output quantize node, decomposed into permute + mm, and
the mm then lowers with the per-channel axis on the wrong side (garbage logits: measured on
random:tiny, |diff| ~ 2e3). `WeightOnlyLinearConfig` claims that pattern as a whole linear, so the
node visitor emits an fp32 input and a ``qcint8`` filter and XNNPACK picks the f32_qc8w kernel.
Every other linear goes through the stock config unchanged.
"""

from __future__ import annotations

import contextlib

import torch

from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
from executorch.backends.xnnpack.partition.config.gemm_configs import LinearConfig
from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.backends.xnnpack.utils.quant_utils import (
    _get_block_size_input_scale,
    is_affine_qdq,
    is_dequant,
    tag_as_implicit_q_dq,
)
from executorch.backends.xnnpack.utils.utils import get_input_node, is_param_node


def _is_weight_only(node) -> bool:
    return is_dequant(get_input_node(node, 1)) and not is_dequant(get_input_node(node, 0))


def _is_per_channel_int8(dequant) -> bool:
    """torchao writes per-channel as one group spanning the whole row: block_size == [1, in]."""
    if not is_affine_qdq(dequant):
        return False
    block_size, weight, _scale = _get_block_size_input_scale(dequant)
    qmin, qmax = dequant.args[5], dequant.args[6]
    return (len(block_size) == 2 and block_size[0] == 1 and block_size[1] == weight.shape[1]
            and (qmin, qmax) == (-128, 127))


class WeightOnlyLinearConfig(LinearConfig):
    """`LinearConfig` plus float-activation x per-channel-int8-weight linears."""

    def _detect_precision(self, node):
        if _is_weight_only(node):
            return ConfigPrecisionType.FP32  # float activations in, float out
        return super()._detect_precision(node)

    def _get_weight_deps(self, node, ep, precision):
        if not _is_weight_only(node):
            return super()._get_weight_deps(node, ep, precision)
        dequant = get_input_node(node, self.weight_idx)
        weight = get_input_node(dequant, 0)
        if not is_param_node(ep, weight):
            return False, []
        if not _is_per_channel_int8(dequant):
            return False, []  # XNNPACK's float-activation kernels take per-channel int8 weights only
        deps = [dequant, weight, *dequant.all_input_nodes[1:3]]
        tag_as_implicit_q_dq(dequant)
        return True, deps


class WholeLinearPartitioner(XnnpackPartitioner):
    """XNNPACK's partitioner, asking to keep its ops (here: aten.linear) whole without a per-node check.

    With a per-node check, ExecuTorch 1.5 lowers through its EDGE_DO_NOT_DECOMP path: three full
    ``run_decompositions`` retraces of the program instead of one (measured: 43% of the lowering
    time of the default model's 8da4w program). Every linear in our graphs is one XNNPACK takes
    (fp32, dynamically quantized, or weight-only int8 via `WeightOnlyLinearConfig`), so the check
    would keep them all anyway; `export.check_delegated` fails the export if one was left out.
    """

    def ops_to_not_decompose(self, ep):
        ops, _check = super().ops_to_not_decompose(ep)
        return ops, None


def xnnpack_partitioner() -> XnnpackPartitioner:
    configs = [WeightOnlyLinearConfig if c is LinearConfig else c for c in ALL_PARTITIONER_CONFIGS]
    return WholeLinearPartitioner(configs=configs)


def _needs_layout_passes(ep) -> bool:
    """True when a partition holds a node the layout passes act on: a memory-format or dim-order copy,
    a clone, or a 4-D op XNNPACK runs channels-last. Our decoders' partitions hold none of these
    (linears, elementwise ops and 3-D views): the passes then only retrace the graph with fake
    tensors and change nothing (measured: byte-identical .pte for every recipe on random:tiny and for
    8da4w on the real 135M; 25% of its lowering time)."""
    from executorch.backends.xnnpack._passes.channels_last_tagged_reshape_pass import ChannelsLastTaggedReshapePass
    from executorch.exir.dialects._ops import ops as exir_ops

    layout_ops = {exir_ops.edge.aten._to_copy.default, exir_ops.edge.dim_order_ops._to_dim_order_copy.default,
                  exir_ops.edge.dim_order_ops._empty_dim_order.default, exir_ops.edge.aten.clone.default}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in layout_ops:
            return True
        if node.target in ChannelsLastTaggedReshapePass.memory_sensitive_ops_nhwc:
            val = node.args[0].meta.get("val") if node.args and isinstance(node.args[0], torch.fx.Node) else None
            if not isinstance(val, torch.Tensor) or val.dim() == 4:  # unknown shape: run the passes
                return True
    return False


@contextlib.contextmanager
def lean_xnnpack_passes():
    """Run only the XNNPACK preprocess passes this model's graph needs.

    XnnpackBackend.preprocess runs 17 graph passes on every partition, each a full fake-tensor
    retrace (conv/batch-norm/upsample/PReLU/SDPA pattern rewrites and more); on a quantized
    30-layer decoder that was about half of a many-minute lowering. Our graphs hold linears,
    elementwise ops, views and means only: a partition gets the dim-order/clone clean-ups and the
    channels-last tagging only when it holds a node they act on (`_needs_layout_passes`), and no
    pass at all otherwise. Scoped to our own lowering call; the correctness of the result is
    checked by the tests (program logits == eager model logits).
    """
    from executorch.backends.xnnpack import _passes as xp
    from executorch.backends.xnnpack import xnnpack_preprocess as pre
    from executorch.backends.xnnpack._passes.channels_last_tagged_reshape_pass import ChannelsLastTaggedReshapePass
    from executorch.backends.xnnpack._passes.remove_redundant_copy_pass import RemoveRedundantCopyPass

    lean = [xp.XNNPACKRemoveCloneOpsTransform, xp.DimOrderOpsRevertPass, ChannelsLastTaggedReshapePass,
            RemoveRedundantCopyPass]
    original = pre.XNNPACKPassManager

    class LeanPassManager(original):
        def __init__(self, exported_program, passes=None):
            super().__init__(exported_program, passes=passes or lean)

        def transform(self):
            if not _needs_layout_passes(self.exported_program):
                return self.exported_program
            return super().transform()

    pre.XNNPACKPassManager = LeanPassManager
    try:
        yield
    finally:
        pre.XNNPACKPassManager = original
