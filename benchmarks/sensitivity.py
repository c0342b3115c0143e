"""Which layer matrices a 4-bit grid hurts most: each fused matrix quantized alone, the rest float (issue 19).

For every fused layer matrix (``layers.N.qkv_proj | o_proj | gate_up_proj | down_proj``) the eager
model gets only that matrix on the candidate grid (ONNX MatMulNBits' effective weights, as
offgrid_screen.py computes them) and is scored teacher-forced against the fp32 model on the first
--eval-tokens of the eval set. kld adds up nearly linearly over small independent errors, so the rows
rank where bits pay: the ONNX recipes' 8-bit list (targets/onnx/recipes.py) is read off this table,
largest kld per MB of 8-bit upgrade first.

    python benchmarks/sensitivity.py --models offgrid default --method offset --eval-tokens 512 \\
        --out bench-results/sensitivity.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from envelope import envelope, write  # noqa: E402
from offgrid_screen import logits_of, onnx_effective, reference, score  # noqa: E402

from smolship.exporter.calibration import calibration_set, collect  # noqa: E402
from smolship.exporter.naming import FUSED_OF  # noqa: E402
from smolship.exporter.model import Llama  # noqa: E402
from smolship.targets.onnx.blockquant import BlockQuant  # noqa: E402

UNITS = tuple(dict.fromkeys(FUSED_OF.values()))  # qkv_proj, o_proj, gate_up_proj, down_proj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["offgrid", "default"])
    ap.add_argument("--method", default="offset", help="onnx blockquant method of the 4-bit grid")
    ap.add_argument("--eval-tokens", type=int, default=512)
    ap.add_argument("--calib-tokens", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=Path("bench-results/sensitivity.json"))
    args = ap.parse_args()
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
        write(args.out, envelope("sensitivity", {"method": args.method, "eval_tokens": args.eval_tokens,
                                                 "calib_tokens": args.calib_tokens}, rows))



if __name__ == "__main__":
    main()
