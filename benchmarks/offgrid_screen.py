"""Teacher-forced eager screening of 4-bit recipes on the default and the off-grid model (issue 19).

Weights are quantized in the PyTorch model (ONNX candidates: the effective weights MatMulNBits would
compute with, via onnx/blockquant.py, weight-only: int8 activation rounding is not simulated; ExecuTorch
candidates: executorch/quantize.apply_plan's torchao tensors run eagerly, int8 dynamic activations
included) and scored against the fp32 model of the same source on the first --eval-tokens of the eval
set (what validation scores); calibration is the held-out policy's (exporter.calibration). Cheap enough
to sweep; full exports (benchmarks/offgrid_matrix.py) confirm the chosen points in their runtimes.

    python -m benchmarks.offgrid_screen --models default offgrid --eval-tokens 1024 \\
        --candidates onnx:offset onnx:offset-gptq et:8da4w et:8da4w-gptq   # bench-results/offgrid_screen.json
    python -m benchmarks.offgrid_screen --models random:tiny --candidates onnx:offset --eval-tokens 64 \\
        --calib-tokens 256 --out /tmp/offgrid_screen.json                  # a quick check
ONNX candidate syntax: onnx:<method>[:b<block>][:8=<regex on fused names>] (several :8= allowed)
[:8b<block>] (8-bit layers symmetric in blocks of this size) [:e<block>] (8-bit embedding/head block size).
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np
import torch

from smolship.exporter import load_model
from smolship.exporter.calibration import calibration_set, collect, stats_key
from smolship.evalset import load_eval
from smolship.quant.rules import Rule

from benchmarks.common import add_output_args, envelope, merged_rows, output_path, script_name, write

SCRIPT = script_name(__file__)
SPECS = {"default": None, "offgrid": "offgrid:smollm2-135m?seed=0"}


def reference(model_name: str, eval_tokens: int):
    """(source, its first `eval_tokens` eval documents, a cache length that holds them, fp32 logits of each)."""
    source = load_model(SPECS.get(model_name, model_name))
    docs = load_eval(source.tokenizer, max_tokens=eval_tokens)
    max_len = max(len(d.ids) for d in docs) + 1
    return source, docs, max_len, logits_of(source.build(max_seq_len=max_len), docs)


@torch.inference_mode()
def logits_of(model, docs) -> list[torch.Tensor]:
    return [model(torch.tensor([d.ids]), torch.tensor([0]))[0].float() for d in docs]


def score(ref: list[torch.Tensor], got: list[torch.Tensor]) -> dict:
    kl, top = [], []
    for r, g in zip(ref, got):
        lr, lg = torch.log_softmax(r.double(), -1), torch.log_softmax(g.double(), -1)
        kl.append((lr.exp() * (lr - lg)).sum(-1))
        top.append((r.argmax(-1) == g.argmax(-1)).double())
    kl, top = torch.cat(kl), torch.cat(top)
    return {"kld_mean": round(float(kl.mean()), 5), "kld_p99": round(float(kl.quantile(0.99)), 4),
            "top1": round(float(top.mean()), 4), "tokens": int(kl.numel())}


def parse_onnx(spec: str):
    from smolship.targets.onnx.blockquant import BlockQuant
    from smolship.targets.onnx.recipes import EMBEDDING_8BIT

    parts = spec.split(":")[1:]
    method, block, eight, eight_cfg, emb = parts[0], 32, [], BlockQuant(8, 32, False, "rtn"), EMBEDDING_8BIT
    for p in parts[1:]:
        if p.startswith("b"):
            block = int(p[1:])
        elif p.startswith("8="):
            eight.append(p[2:])
        elif p.startswith("8b"):  # 8-bit layers symmetric, blocks of this size
            eight_cfg = BlockQuant(8, int(p[2:]), True, "rtn")
        elif p.startswith("e"):  # embedding / head blocks of this size (8-bit symmetric)
            emb = BlockQuant(8, int(p[1:]), True, "rtn")
    return BlockQuant(4, block, False, method), eight_cfg, eight, emb


def onnx_effective(source, spec: str, calib, only: str | None = None) -> tuple[dict, float]:
    """State dict with every layer matrix replaced by what MatMulNBits computes; layer-weight MB estimate.

    `only`: a regex on fused names; the layers it misses stay float (sensitivity of one matrix)."""
    from smolship.targets.onnx.blockquant import dequantize, quantize_matrix, quantize_weight
    four, eight_cfg, eight, emb_cfg = parse_onnx(spec)
    sd = dict(source.state_dict)
    mb = 0.0
    for name, w in source.state_dict.items():
        fused = stats_key(name)  # layers.N.qkv_proj ...: the ONNX graph's weight, and its statistic's key
        if fused is None or not name.startswith("layers."):
            continue
        if only is not None and not re.fullmatch(only, fused):
            continue
        cfg = eight_cfg if any(re.fullmatch(p, fused) for p in eight) else four
        imp = calib.importance.get(fused) if calib else None
        hes = calib.hessian.get(fused) if calib else None
        wt = w.t().numpy()  # (K, N)
        qz, _, eff = quantize_matrix(wt, cfg, imp, hes)
        mb += (qz.packed.nbytes + qz.scales.nbytes + (qz.zero_points.nbytes if qz.zero_points is not None else 0)) / 1e6
        sd[name] = torch.from_numpy(np.ascontiguousarray(eff.T))
    emb = source.state_dict["embed_tokens.weight"]
    qe = quantize_weight(emb.t().numpy(), emb_cfg)
    sd["embed_tokens.weight"] = torch.from_numpy(np.ascontiguousarray(dequantize(qe).T))
    return sd, round(mb + (qe.packed.nbytes + qe.scales.nbytes) / 1e6, 1)


def run_et(source, spec: str, docs, max_len: int, calib_tokens: int = 4096):
    from smolship.targets.executorch import quantize as Q
    from smolship.targets.executorch.recipes import PLANS

    name = spec.split(":", 1)[1]
    if name in PLANS:
        plan = PLANS[name]
    else:  # et:<scheme>[:8=<regex>]...[:8s=<scheme>][:h=<scheme>][:rule]: layers by scheme, the 8-bit scheme
        # (default 8da8w-rtn) on the regexes or on quant/mixed.py's rule, the head's scheme (default 8da8w-rtn)
        from smolship.quant.mixed import eight_bit_patterns

        parts = name.split(":")
        opts = dict(p.split("=", 1) for p in parts[1:] if "=" in p and not p.startswith("8="))
        eight = Q.SCHEMES[opts.get("8s", "8da8w-rtn")]
        regexes = [p[2:] for p in parts[1:] if p.startswith("8=")]
        if "rule" in parts[1:]:
            regexes += eight_bit_patterns(source.config.num_layers, "module")
        head = Q.SCHEMES[opts.get("h", "8da8w-rtn")]
        plan = Q.QuantPlan(rules=(Rule("lm_head", head), *[Rule(r, eight) for r in regexes], Rule(r".*", Q.SCHEMES[parts[0]])),
                           embedding=Q.EMB4)
    model = source.build(max_seq_len=max(max_len, 257))  # calibration pieces are 256 tokens
    seqs = None
    if plan.wants_statistics():
        seqs = calibration_set(source, None, calib_tokens, doc_tokens=256).sequences
    Q.apply_plan(model, plan, seqs)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["default", "offgrid"])
    ap.add_argument("--candidates", nargs="+", required=True)
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--calib-tokens", type=int, default=4096)
    add_output_args(ap)
    args = ap.parse_args()
    args.out = output_path(args, SCRIPT)
    if bad := [c for c in args.candidates if c.split(":")[0] not in ("onnx", "et") or ":" not in c]:
        ap.error(f"a candidate is onnx:<method>... or et:<scheme>... (got {', '.join(bad)})")
    torch.set_num_threads(1)
    rows = []
    for mname in args.models:
        source, docs, max_len, ref = reference(mname, args.eval_tokens)
        calib = None
        if any(c.startswith("onnx:") and c.split(":")[1] not in ("rtn", "offset") for c in args.candidates):
            t0 = time.time()
            cal = calibration_set(source, None, args.calib_tokens)
            calib = collect(source, cal.sequences, want_hessian=True)
            print(f"[{mname}] calibration {calib.tokens} tokens {time.time() - t0:.0f}s", flush=True)
        for cand in args.candidates:
            t0 = time.time()
            if cand.startswith("onnx:"):
                sd, mb = onnx_effective(source, cand, calib)
                from smolship.exporter.model import Llama
                model = Llama.with_weights(source.config, sd, max_seq_len=max_len)
            else:
                model, mb = run_et(source, cand, docs, max_len, args.calib_tokens), None
            row = {"model": mname, "candidate": cand, **score(ref, logits_of(model, docs)),
                   "weights_mb": mb, "seconds": round(time.time() - t0, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            save(args, rows)  # after every row: a sweep cut short keeps what it measured


def save(args, rows: list) -> None:
    key = lambda r: (r["model"], r["candidate"], r["tokens"])  # noqa: E731
    write(args.out, envelope(SCRIPT, {"eval_tokens": args.eval_tokens, "calib_tokens": args.calib_tokens},
                             merged_rows(args.out, rows, key), args.variant))


if __name__ == "__main__":
    main()
