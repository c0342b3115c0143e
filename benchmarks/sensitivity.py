"""Which layer matrices a 4-bit grid hurts most: each fused matrix quantized alone, the rest float (issue 19).

For every fused layer matrix (``layers.N.qkv_proj | o_proj | gate_up_proj | down_proj``) the eager
model gets only that matrix on the candidate grid (ONNX MatMulNBits' effective weights, as
offgrid_screen.py computes them) and is scored teacher-forced against the fp32 model on the first
--eval-tokens of the eval set. kld adds up nearly linearly over small independent errors, so the rows
rank where bits pay: the ONNX recipes' 8-bit list (targets/onnx/recipes.py) is read off this table,
largest kld per MB of 8-bit upgrade first.

    python -m benchmarks.sensitivity --models offgrid default --method offset --eval-tokens 512   # bench-results/sensitivity.json
    python -m benchmarks.sensitivity --models random:tiny --eval-tokens 64 --calib-tokens 256 \\
        --out /tmp/sensitivity.json                                                                # a quick check
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import add_output_args, envelope, output_path, script_name, write
from benchmarks.offgrid_screen import logits_of, onnx_effective, reference, score
from smolship.exporter.calibration import calibration_set, collect
from smolship.exporter.naming import FUSED_OF
from smolship.exporter.model import Llama
from smolship.targets.onnx.blockquant import BlockQuant

SCRIPT = script_name(__file__)

UNITS = tuple(dict.fromkeys(FUSED_OF.values()))  # qkv_proj, o_proj, gate_up_proj, down_proj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["offgrid", "default"])
    ap.add_argument("--method", default="offset", help="onnx blockquant method of the 4-bit grid")
    ap.add_argument("--eval-tokens", type=int, default=512)
    ap.add_argument("--calib-tokens", type=int, default=1024)
    add_output_args(ap)
    args = ap.parse_args()
    out_file = output_path(args, SCRIPT)
    torch.set_num_threads(1)
    rows = []
    want_importance, want_hessian = BlockQuant(4, 32, False, args.method).needs
    for mname in args.models:
        source, docs, max_len, ref = reference(mname, args.eval_tokens)
        calib = None
        if want_importance:  # Hessians only for the GPTQ methods: K x K per matrix, the slow part of collecting
            calib = collect(source, calibration_set(source, None, args.calib_tokens).sequences, want_hessian)
        for layer in range(source.config.num_layers):
            for unit in UNITS:
                t0 = time.time()
                name = f"layers.{layer}.{unit}"
                sd, _ = onnx_effective(source, f"onnx:{args.method}", calib, only=name.replace(".", r"\."))
                got = logits_of(Llama.with_weights(source.config, sd, max_seq_len=max_len), docs)
                params = sum(source.state_dict[f"layers.{layer}.{p}.weight"].numel()
                             for p, fused in FUSED_OF.items() if fused == unit)
                row = {"model": mname, "matrix": name, "params": params, **score(ref, got),
                       "seconds": round(time.time() - t0, 1)}
                print(row, flush=True)
                rows.append(row)
        write(out_file, envelope(SCRIPT, {"models": args.models, "method": args.method, "eval_tokens": args.eval_tokens,
                                          "calib_tokens": args.calib_tokens}, rows, args.variant))
    print(f"wrote {out_file}")



if __name__ == "__main__":
    main()
