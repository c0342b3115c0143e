"""Where an ExecuTorch program spends its decode time: ETDump per-operator profile, one token at a time.

Loads each program with ETDump enabled (the pip wheel's XNNPACK reports its own operators), prefills
32 tokens, decodes --tokens greedy tokens, and sums the time of every event by kind (XNNPACK's
"Fully Connected (NC, QDU8, F32, QB4W) GEMM #7" counts as "Fully Connected (NC, QDU8, F32, QB4W) GEMM"),
per decoded token, skipping the prefill. Profiling adds overhead of its own: compare programs with
each other, not with benchmarks/executorch_front.py's tok/s.

    python -m benchmarks.executorch_profile ours=bench-results/tmp/executorch_front/default/executorch-8da4w/model.pte \
        optimum=bench-results/tmp/executorch_anchor/optimum/model.pte      # bench-results/executorch_profile.json

A name starting with "optimum" is driven with optimum-executorch's inputs (cache_position [n]).
Rows: one per (program, event kind), heaviest first within each program.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import warnings
from pathlib import Path

import torch

from benchmarks.common import add_output_args, envelope, output_path, script_name, write

SCRIPT = script_name(__file__)


def profile(path: Path, optimum: bool, tokens: int) -> dict:
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    from smolship.targets.executorch.runner import load_kernel_libraries

    load_kernel_libraries()
    module = portable_lib._load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
    pos = 0

    def run(ids: list[int]) -> torch.Tensor:
        nonlocal pos
        where = torch.arange(pos, pos + len(ids)) if optimum else torch.tensor([pos])
        pos += len(ids)
        return module.forward([torch.tensor([ids]), where])[0]

    tok = int(run(list(range(100, 132)))[0, -1].argmax())
    for _ in range(tokens):
        tok = int(run([tok])[0, -1].argmax())
    with tempfile.TemporaryDirectory() as tmp:
        etdump = Path(tmp) / "run.etdp"
        module.write_etdump_result_to_file(str(etdump), str(Path(tmp) / "debug.bin"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no debug buffer was asked for: timings only
            inspector = Inspector(etdump_path=str(etdump))
    ms, calls = collections.Counter(), collections.Counter()
    for block in inspector.event_blocks:
        for event in block.events:
            if event.perf_data is None:
                continue
            kind = re.sub(r" #\d+$", "", event.name)
            times = event.perf_data.raw  # ms per occurrence, in execution order: [0] is the prefill's
            per_run = max(1, len(times) // (tokens + 1))
            decode = times[per_run:]
            ms[kind] += sum(decode) / tokens
            calls[kind] += len(decode) / tokens
    return {kind: {"ms_per_token": round(v, 4), "calls_per_token": round(calls[kind], 1)}
            for kind, v in ms.most_common() if v >= 0.001}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("programs", nargs="+", help="NAME=PATH to a model.pte")
    ap.add_argument("--tokens", type=int, default=64)
    add_output_args(ap)
    args = ap.parse_args()
    out_file = output_path(args, SCRIPT)
    programs = [spec.split("=", 1) for spec in args.programs]
    if bad := [spec for spec, p in zip(args.programs, programs) if len(p) != 2 or not Path(p[1]).is_file()]:
        ap.error(f"not NAME=PATH of an existing model.pte: {', '.join(bad)}")
    rows = []
    for name, path in programs:
        events = profile(Path(path), name.startswith("optimum"), args.tokens)
        rows += [{"program": name, "path": path, "event": kind, **v} for kind, v in events.items()]
        print(name, {k: v["ms_per_token"] for k, v in list(events.items())[:6]}, flush=True)
    write(out_file, envelope(SCRIPT, {"tokens": args.tokens, "threads": "runtime default", "programs": args.programs},
                             rows, args.variant))
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
