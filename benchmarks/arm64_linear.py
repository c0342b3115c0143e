"""Which operator makes ExecuTorch 8da4w differ between x86 and arm64: each piece of its linear, alone.

smolship's 8da4w linear is `BlockOffsetLinear`: a symmetric int4 matmul on int8 dynamic activations
(XNNPACK qd8-f32-qb4w, bf16 block scales) plus an int8 weight-only offsets matmul on the block means
(XNNPACK f32-qc8w). 8da8w (qd8-f32-qc8w) differs between the builds 20x less than 8da4w, so the
4-bit path is the suspect. This script lowers each piece of one real layer's linear (SmolLM2-135M
layer 0 gate_proj, the recipe's own quantizer) to its own XNNPACK program, runs it natively and in the
arm64 build under qemu on the same inputs, and reports each build's error against the eager (torchao)
math of the same quantized module.

    python -m benchmarks.arm64_linear --cpus cortex-a76 max-nosme     # bench-results/arm64_linear.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import add_model_arg, add_output_args, envelope, output_path, script_name, write
from smolship.exporter import load_model
from smolship.targets.executorch import quantize as Q
from smolship.targets.executorch.recipes import PLANS
from smolship.validation import platforms as P

SCRIPT = script_name(__file__)

RUN_PTE = """
import sys, numpy as np, torch
from executorch.runtime import Runtime
program = Runtime.get().load_program(sys.argv[1])
x = torch.from_numpy(np.load(sys.argv[2]))
np.save(sys.argv[3], program.load_method("forward").execute([x])[0].numpy())
"""


def lower(module: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    """Lowered as the ExecuTorch target lowers its programs (its partitioner: weight-only int8 linears go to
    XNNPACK's f32-qc8w; a plain XnnpackPartitioner() gets the block-offsets matmul wrong, ~80x its output)."""
    from smolship.targets.executorch.export import lower_to_xnnpack

    ep = torch.export.export(module.eval(), (x,), strict=True)
    path.write_bytes(lower_to_xnnpack(ep, {}).to_executorch().buffer)


def run(argv: list[str], env: dict | None, pte: Path, x: Path, out: Path) -> np.ndarray:
    done = subprocess.run([*argv, "-c", RUN_PTE, str(pte), str(x), str(out)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-3:])
    return np.load(out)


def pieces(layer_weight: torch.Tensor) -> dict[str, torch.nn.Module]:
    """The recipe's quantized linear for this weight, and its two matmuls alone."""
    rule = next(r for r in PLANS["8da4w"].rules if r.pattern == r".*")
    full = Q.quantize_linear(layer_weight, rule.scheme)
    out = {"8da4w linear (both)": full}
    if isinstance(full, Q.BlockOffsetLinear):
        out["int4 matmul, int8 dynamic activations (qd8-f32-qb4w)"] = full.main
        out["block-mean offsets, int8 weights (f32-qc8w)"] = full.offsets
    w8 = Q.quantize_linear(layer_weight, Q.LinearScheme("8da8w", bits=8, group_size=0, dynamic_activations=True))
    out["8da8w matmul (qd8-f32-qc8w), for scale"] = w8
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", nargs="+", default=["cortex-a76"])
    ap.add_argument("--tokens", type=int, default=32)
    add_model_arg(ap)
    add_output_args(ap)
    a = ap.parse_args()
    out_file = output_path(a, SCRIPT)
    source = load_model(a.model)
    w = source.state_dict["layers.0.mlp.gate_proj.weight"].float()
    g = torch.Generator().manual_seed(0)
    # [batch 1, tokens, in]: the shape the model's linears see (BlockOffsetLinear reads its batch and width)
    x = (torch.randn(a.tokens, w.shape[1], generator=g) * (1 + 4 * (torch.rand(w.shape[1], generator=g) > 0.98)))[None]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", x.numpy())
        for name, module in pieces(w).items():
            block_means = isinstance(module, torch.nn.Linear) and module.in_features != w.shape[1]
            xin = x
            if block_means:  # the offsets matmul takes each block's mean (blocks of in / its in_features channels)
                xin = x.reshape(1, a.tokens, module.in_features, -1).mean(-1)
                np.save(tmp / "xm.npy", xin.numpy())
            pte = tmp / "m.pte"
            lower(module, xin, pte)
            with torch.no_grad():
                eager = module(xin).numpy().astype(np.float64)
            scale = np.abs(eager).max()
            xfile = tmp / ("xm.npy" if block_means else "x.npy")
            builds = {"x86_64 (native)": ([sys.executable], None)}
            for cpu in a.cpus:
                plat = P.arm64(cpu)
                builds[plat.label] = (list(plat.argv), plat.env)
            outs = {b: run(argv, env, pte, xfile, tmp / "y.npy").astype(np.float64) for b, (argv, env) in builds.items()}
            native = outs["x86_64 (native)"]
            for b, y in outs.items():
                row = {"piece": name, "build": b, "max_abs_err_vs_eager": float(np.abs(y - eager).max() / scale),
                       "rms_err_vs_eager": float(np.sqrt(((y - eager) ** 2).mean()) / scale),
                       "max_abs_diff_vs_x86": float(np.abs(y - native).max() / scale)}
                rows.append(row)
                print(f"{name:55} {b:28} err vs eager max {row['max_abs_err_vs_eager']:.2e} rms "
                      f"{row['rms_err_vs_eager']:.2e}  vs x86 max {row['max_abs_diff_vs_x86']:.2e}", flush=True)
    write(out_file, envelope(SCRIPT, {"cpus": a.cpus, "tokens": a.tokens, "model": a.model,
                                      "weight": "layers.0.mlp.gate_proj", "errors": "relative to max |eager output|"},
                             rows, a.variant))
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
