"""Ray's overhead on one machine: the same 2-model x 4-target matrix (tiny models) with the local process
pool (--jobs 2) and with a local Ray (--ray, num_cpus = this machine's CPUs, one CPU per job), runs
interleaved so that load from other programs on the machine falls on both alike. Writes JSON.

    python -m benchmarks.matrix_overhead --repeats 2                   # bench-results/matrix_overhead.json
    python -m benchmarks.matrix_overhead --repeats 1 --order ray,local --variant ray-first   # the other order
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, add_output_args, envelope, output_path, script_name, write

SCRIPT = script_name(__file__)

SPEC = """
models = ["{tiny_a}", "{tiny_b}"]
targets = ["gguf", "onnx", "executorch", "coreml"]
max_seq_len = 512
[recipes]
gguf = ["q8_0"]
onnx = ["int4"]
executorch = ["8da4w"]
coreml = ["w4"]
[eval]
tokens = 256
latency = true
threads = 1
runs = 3
"""


BACKENDS = {"local": ["--jobs", "2"], "ray": ["--ray"]}  # 2 jobs at a time both ways (Ray: num_cpus=2, 1 CPU a job)


def run(spec: Path, backend: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "smolship.cli", "matrix", str(spec), "--out", f"{tmp}/release", "--json", *backend]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        report = json.loads(proc.stdout)
        hashes = {}
        for row in report["rows"]:
            m = json.loads((Path(row["path"]) / "manifest.json").read_text())
            hashes[row["bundle"]] = {rel: f["sha256"] for rel, f in m["files"].items() if rel.split("/")[0] in m["model_files"]}
    return {"backend": report["backend"], "wall_s": round(wall, 1), "matrix_s": report["seconds"],
            "bundles": len(report["rows"]), "failures": len(report["failures"]),
            "job_s": {j["job"]: j["seconds"] for j in report["jobs"]}, "model_sha256": hashes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--order", default="local,ray", help="backends in the order run within each repeat")
    add_output_args(ap)
    args = ap.parse_args()
    out_file = output_path(args, SCRIPT)
    if bad := [b for b in args.order.split(",") if b not in BACKENDS]:
        ap.error(f"--order: unknown backend {', '.join(bad)} (choose from {', '.join(BACKENDS)})")
    if "ray" in args.order.split(","):
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            sys.exit("the ray backend needs Ray: pip install -e '.[ray]' (or --order local)")
    from smolship.exporter.sources import load_model
    sys.path.insert(0, str(ROOT / "tests"))
    from matrix_fixtures import tiny_folders  # the two tiny models of the tests (seed 0 and 1, HF folders)

    with tempfile.TemporaryDirectory() as tmp:
        tiny_a, tiny_b = tiny_folders(load_model("random:tiny"), Path(tmp))
        spec = Path(tmp) / "release.toml"
        spec.write_text(SPEC.format(tiny_a=tiny_a, tiny_b=tiny_b))
        runs = []
        for i in range(args.repeats):
            for name in args.order.split(","):
                row = {"run": i, "name": name, **run(spec, BACKENDS[name])}
                row["sha256_of_all"] = hashlib.sha256(json.dumps(row["model_sha256"], sort_keys=True).encode()).hexdigest()
                print(json.dumps({k: v for k, v in row.items() if k != "model_sha256"}), flush=True)
                runs.append(row)
    first = runs[0]["model_sha256"]
    result = envelope(SCRIPT, {"repeats": args.repeats, "order": args.order, "models": "2 tiny HF folders"},
                      [{k: v for k, v in r.items() if k != "model_sha256"} for r in runs], args.variant,
                      same_bundles_every_run=all(r["model_sha256"] == first for r in runs))
    write(out_file, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "machine")}))


if __name__ == "__main__":
    main()
