"""Every 4-bit-class recipe x {default model, off-grid model}: full export, validated in its runtime (issue 19).

Each bundle is exported by the target, then scored by smolship's validator through the runtime's own
decode loop against the fp32 reference of the same source (Core ML on Linux: compressed weights read
back out of the package and run in the reference graph). Decode tok/s is not measured here: this
machine is shared, so latency against the anchors is left to a quiet machine.

    python -m benchmarks.offgrid_matrix --models default offgrid --eval-tokens 2048 \\
        --runs onnx:int4 executorch:8da4w coreml:w4 gguf:q4_k_m            # bench-results/offgrid_matrix.json
    python -m benchmarks.offgrid_matrix --models random:tiny --runs gguf:q8_0 --eval-tokens 64 \\
        --out /tmp/offgrid_matrix.json                                      # a quick check
A run may carry knobs: onnx:int4:{"int4_method":"offset-gptq"} (JSON ExportOptions.extra).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import add_output_args, check_export_options, envelope, merged_rows, output_path, script_name, write
from benchmarks.offgrid_screen import SPECS
from smolship.export import export_bundle
from smolship.exporter import load_model
from smolship.targets import ExportOptions, get_target
from smolship.validation.parity import ParitySettings
from smolship.validation.validate import ValidationSettings, Validator

SCRIPT = script_name(__file__)


def parse_run(run: str) -> tuple[str, str, dict]:
    target, rest = run.split(":", 1)
    recipe, _, knobs = rest.partition(":")
    return target, recipe, (json.loads(knobs) if knobs else {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["default", "offgrid"])
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    add_output_args(ap)
    args = ap.parse_args()
    args.out = output_path(args, SCRIPT)
    try:
        runs = [parse_run(run) for run in args.runs]
    except ValueError as e:
        ap.error(f"--runs takes TARGET:RECIPE[:JSON knobs] ({e})")
    for target, recipe, knobs in runs:
        if recipe not in get_target(target).recipes:
            ap.error(f"{target} has no recipe {recipe!r}")
        check_export_options(target, [knobs], f"--runs {target}:{recipe}")
    rows = []
    work = Path(tempfile.mkdtemp(prefix="offgrid-matrix-"))
    try:
        for mname in args.models:
            source = load_model(SPECS.get(mname, mname))
            validator = Validator(source, ValidationSettings(eval_tokens=args.eval_tokens, measure_latency=False,
                                                             parity=ParitySettings(greedy_prompts=2, greedy_tokens=16)))
            for run in args.runs:
                target, recipe, knobs = parse_run(run)
                t0 = time.time()
                path, manifest = export_bundle(source, target, get_target(target).recipes[recipe], work / mname,
                                               ExportOptions(extra=knobs), validator=validator, force=True)
                manifest = json.loads((path / "manifest.json").read_text())
                v = manifest.get("validation", {})
                wp = v.get("weight_parity") or {}
                par = v if "kld_mean" in v else wp
                row = {"model": mname, "target": target, "recipe": recipe, "knobs": knobs,
                       "size_mb": manifest.get("size_mb") or v.get("size_mb"),
                       "kld_mean": par.get("kld_mean"), "top1": par.get("top1_agreement"),
                       "greedy_match": par.get("greedy_match"), "runtime_ran": v.get("runtime_ran"),
                       "eval_tokens": par.get("eval_tokens"), "calibration": manifest.get("target_info", {}).get("calibration"),
                       "seconds": round(time.time() - t0, 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
                save(args, rows)  # after every row: a run cut short keeps what it measured
                shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def save(args, rows: list) -> None:
    key = lambda r: (r["model"], r["target"], r["recipe"], json.dumps(r["knobs"], sort_keys=True))  # noqa: E731
    write(args.out, envelope(SCRIPT, {"eval_tokens": args.eval_tokens}, merged_rows(args.out, rows, key), args.variant))


if __name__ == "__main__":
    main()
