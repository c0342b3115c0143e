"""The package's own weights, read back as Runners: what `validation.weight_parity` measures off macOS.

Off macOS this is the strongest evidence available. Every weight is dequantized exactly as the
package stores it (fp16 consts widened to fp32, constexpr ops decompressed by coremltools) and then
(1) loaded into exporter.model.Llama (the fp32 reference graph) - the headline figures, which isolate
what the weight storage costs; and (2) run through the converted graph itself at fp16
(graph_runner.GraphRunner), Core ML's compute precision - `fp16_graph`, which catches activation
overflow and fp16 rounding. Core ML's own kernels are what only a Mac can show; the report says so.
This module only reads; validation drives the parity loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from smolship.exporter.model import Llama
from smolship.runner import ReferenceRunner
from smolship.targets.coreml import readback
from smolship.targets.coreml.graph_runner import GraphRunner
from smolship.targets.coreml.naming import weight_class

METHOD = ("weights read back from model.mlpackage (dequantized as stored: fp16 -> fp32, constexpr ops "
          "decompressed), run in the fp32 reference graph through prefill + decode. fp16_graph: the same "
          "weights in the converted graph at fp16 in PyTorch (Core ML's precision, not its kernels)")


def weight_error(pkg: readback.Package, source) -> dict[str, float]:
    """Relative RMS error of the stored weights against the source, per weight class (diagnostic)."""
    err: dict[str, list[float]] = {}
    for name, w in pkg.weights.items():
        ref = source.state_dict[name].float().numpy()
        rel = float(np.sqrt(np.mean((w.value - ref) ** 2)) / (np.sqrt(np.mean(ref ** 2)) + 1e-12))
        err.setdefault(weight_class(name) or "norm", []).append(rel)
    return {cls: float(np.mean(v)) for cls, v in sorted(err.items())}


class CoreMLStoredWeights:
    """`facts` (structure check, storage, per-class weight error, method), then two runners in order:
    `weights_runner(seq)` (fp32 reference graph holding the read-back tensors, no second copy: 6.8 GB at 1.7B)
    and `graph_runner(seq)` (the converted graph at fp16; it releases each fp32 value as it casts, so the
    check costs half a model instead of one and a half: the difference between fitting a 1.7B model in
    24 GiB or not). Drop the first runner before asking for the second."""

    name = "coreml-weights"

    def __init__(self, bundle: Path, manifest: dict, source, compressed: dict[str, str]):
        self.cfg = source.config
        self.pkg = readback.read_package(Path(bundle) / readback.MODEL_FILE, list(source.state_dict))
        problems = readback.check_structure(self.pkg, self.cfg, manifest["max_seq_len"], compressed)
        self.facts = {"method": METHOD, "structure_ok": not problems, "structure_problems": problems,
                      "weight_rel_rmse": weight_error(self.pkg, source), "storage": readback.summary(self.pkg)}

    def weights_runner(self, max_seq_len: int) -> ReferenceRunner:
        runner = ReferenceRunner(Llama.with_weights(self.cfg, readback.state_dict(self.pkg), max_seq_len))
        runner.name = self.name
        return runner

    def graph_runner(self, max_seq_len: int) -> GraphRunner:
        fp16 = {}
        for name, w in self.pkg.weights.items():
            fp16[name] = torch.from_numpy(w.value).half()
            w.value = None
        return GraphRunner(self.cfg, fp16, max_seq_len)
