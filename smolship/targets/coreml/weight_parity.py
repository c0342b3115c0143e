"""Parity without the Core ML runtime: the package's own weights, read back, run in PyTorch.

Off macOS this is the strongest evidence available. Every weight is dequantized exactly as the
package stores it (fp16 consts widened to fp32, constexpr ops decompressed by coremltools) and then
(1) loaded into exporter.model.Llama and driven through the teacher-forced prefill + decode loop
(validation.parity.measure_parity) against the fp32 reference - the headline figures, which isolate
what the weight storage costs; and (2) run through the converted graph itself at fp16
(graph_runner.GraphRunner), Core ML's compute precision - `fp16_graph`, which catches activation
overflow and fp16 rounding. Core ML's own kernels are what only a Mac can show; the report says so.
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import numpy as np
import torch

from smolship.exporter.model import Llama
from smolship.runner import ReferenceRunner
from smolship.targets.coreml import readback
from smolship.targets.coreml.graph_runner import GraphRunner
from smolship.targets.coreml.naming import weight_class
from smolship.validation.evalset import load_eval
from smolship.validation.parity import ParitySettings, ReferenceCache, measure_parity

EVAL_TOKENS = 512  # a short eval: the loop runs in PyTorch eager, one decode step per token
SETTINGS = ParitySettings(greedy_prompts=2, greedy_tokens=16)
METHOD = ("weights read back from model.mlpackage (dequantized as stored: fp16 -> fp32, constexpr ops "
          "decompressed), run in the fp32 reference graph through prefill + decode. fp16_graph: the same "
          "weights in the converted graph at fp16 in PyTorch (Core ML's precision, not its kernels)")


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block on `n` intra-op threads. The parity loop is hundreds of tiny single-token steps:
    extra threads barely help them, and on a busy machine OpenMP's spin-waiting makes each attention
    call ~1000x slower (measured 20 ms vs 0.01 ms on 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def readback_model(pkg: readback.Package, cfg, max_seq_len: int) -> Llama:
    """The reference model holding the read-back tensors themselves (no second copy: 6.8 GB at 1.7B)."""
    return Llama.with_weights(cfg, readback.state_dict(pkg), max_seq_len)


def fp16_weights(pkg: readback.Package) -> dict[str, torch.Tensor]:
    """The read-back weights as fp16 tensors, releasing each fp32 copy as it goes: the fp16 graph
    check then costs half a model instead of one and a half (the difference between fitting and not
    fitting a 1.7B model in 24 GiB). `pkg` holds no dense values afterwards."""
    out = {}
    for name, w in pkg.weights.items():
        out[name] = torch.from_numpy(w.value).half()
        w.value = None
    return out


def graph_parity(pkg: readback.Package, cfg, seq: int, reference: ReferenceCache, docs) -> dict:
    """Parity of the converted graph run at fp16 (graph_runner); non-finite logits are reported, not raised."""
    keys = ("kld_mean", "top1_agreement", "max_abs_logit_diff", "nll_delta", "greedy_match")
    try:
        got = measure_parity(GraphRunner(cfg, fp16_weights(pkg), seq), reference, docs, SETTINGS)
    except ValueError as e:  # measure_parity refuses non-finite logits: an fp16 overflow
        return {"error": str(e)}
    return {k: got[k] for k in keys}


def weight_error(pkg: readback.Package, source) -> dict[str, float]:
    """Relative RMS error of the stored weights against the source, per weight class (diagnostic)."""
    err: dict[str, list[float]] = {}
    for name, w in pkg.weights.items():
        ref = source.state_dict[name].float().numpy()
        rel = float(np.sqrt(np.mean((w.value - ref) ** 2)) / (np.sqrt(np.mean(ref ** 2)) + 1e-12))
        err.setdefault(weight_class(name) or "norm", []).append(rel)
    return {cls: float(np.mean(v)) for cls, v in sorted(err.items())}


def weight_parity(bundle: Path, manifest: dict, source, compressed: dict[str, str],
                  eval_tokens: int = EVAL_TOKENS, threads: int = 1, with_fp16_graph: bool = True) -> dict:
    """Metrics of measure_parity plus the structure check; `compressed` = {param: scheme} expected."""
    cfg, max_seq_len = source.config, manifest["max_seq_len"]
    pkg = readback.read_package(Path(bundle) / readback.MODEL_FILE, list(source.state_dict))
    problems = readback.check_structure(pkg, cfg, max_seq_len, compressed)
    docs = load_eval(source.tokenizer, max_tokens=eval_tokens)
    longest = max(len(d.ids) for d in docs) + SETTINGS.greedy_tokens + 8
    seq = max(longest, 256)
    weight_rel_rmse = weight_error(pkg, source)  # before graph_parity releases the fp32 values
    with torch.inference_mode(), torch_threads(threads):
        runner = ReferenceRunner(readback_model(pkg, cfg, seq))
        runner.name = "coreml-weights"
        reference = ReferenceCache(ReferenceRunner.from_source(source, max_seq_len=seq))
        metrics = measure_parity(runner, reference, docs, SETTINGS)
        del runner
        gc.collect()  # the read-back model's fp32 tensors go before the fp16 copy is made
        fp16_graph = graph_parity(pkg, cfg, seq, reference, docs) if with_fp16_graph else None
    return {
        **metrics,
        "fp16_graph": fp16_graph,
        "method": METHOD,
        "structure_ok": not problems,
        "structure_problems": problems,
        "weight_rel_rmse": weight_rel_rmse,
        "storage": readback.summary(pkg),
    }
