"""The default bundles on the phone's side: x86, arm64 kernels under qemu (per emulated CPU) and the apps' runtimes.

Each bundle runs natively and on each platform over the same eval tokens (teacher-forced through its own
KV-cache loop); rows give kld_mean / top-1 against the fp32 reference and the divergence from the native
build (`vs_native`). `finding` marks an arm64 kld above 1.5x the x86 one. Emulated runs give logits only:
no speed is recorded. Core ML bundles cannot run off macOS and are left out.

    make setup-arm64
    smolship export --out out            # or any folder of bundles
    python -m benchmarks.platforms out/* --cpus cortex-a76 neoverse-n2 --tokens 256   # bench-results/platforms.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import add_output_args, envelope, merged_rows, output_path, script_name, write
from smolship.bundle import read_manifest
from smolship.validation import platforms as P
from smolship.validation.validate import ValidationSettings, Validator, source_for

SCRIPT = script_name(__file__)


def row_key(r: dict) -> tuple:
    """Rows of one (model, bundle, platform) replace each other across runs."""
    return r["model"], r["bundle"], r["platform"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--cpus", nargs="*", default=None, help="qemu CPU names from .venv/arm64/env.json (default: all)")
    ap.add_argument("--no-apps", action="store_true", help="Leave out the apps' pinned runtime versions.")
    ap.add_argument("--tokens", type=int, default=P.PLATFORM_EVAL_TOKENS)
    add_output_args(ap)
    a = ap.parse_args()
    a.out = output_path(a, SCRIPT)
    cpus = a.cpus
    if cpus is None:
        cpus = list(json.loads(P.arm64_env_file().read_text())["cpus"]) if P.arm64_env_file().is_file() else []
    arm = [P.arm64(cpu) for cpu in cpus]
    validators: dict[str, Validator] = {}
    rows = []
    for bundle in a.bundles:
        if not (bundle / "manifest.json").is_file():
            continue
        manifest = read_manifest(bundle)
        if manifest["target"] not in P.HOSTED_TARGETS:
            print(f"skip {bundle.name}: {manifest['target']} runs only on macOS")
            continue
        key = manifest["source"].get("sha256") or manifest["source"]["ref"]
        if key not in validators:
            validators[key] = Validator(source_for(manifest), ValidationSettings(eval_tokens=a.tokens, measure_latency=False))
        plats = arm + ([] if a.no_apps else P.app_platforms(manifest["target"]))
        t0 = time.time()
        for r in validators[key].platform_rows(bundle, manifest, plats, tokens=a.tokens):
            rows.append({"bundle": bundle.name, "target": manifest["target"], "recipe": manifest["quant"]["recipe"],
                         "model": manifest["source"].get("name"), **r})
            if "error" in r:
                print(f"{bundle.name:18} {r['platform']:28} not run: {r['error']}", flush=True)
                continue
            vs = r.get("vs_native", {})
            print(f"{bundle.name:18} {r['platform']:28} kld {r['kld_mean']:.4f} top1 {r['top1_agreement']:.3f}"
                  + (f"  vs native kld {vs['kld_mean']:.4f} top1 {vs['top1_agreement']:.3f}" if vs else "")
                  + ("  FINDING" if r.get("finding") else ""), flush=True)
        print(f"  ({time.time() - t0:.0f} s)")
        # written after every bundle: emulation is slow, and a run cut short keeps what it measured
        write(a.out, envelope(SCRIPT, {"tokens": a.tokens, "cpus": cpus, "apps": not a.no_apps},
                              merged_rows(a.out, rows, row_key), a.variant))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
