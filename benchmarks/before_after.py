"""Two commits side by side on the same recipes: size, parity and decode speed of each one's bundles (issue 16).

A refactor that claims "figures kept" proves it here. Each side's tree (a git worktree) exports every run through
the CLI with validation; then the current tree's `smolship bench` times both sides' bundles interleaved, round
by round (the second round in the other order), so machine load hits both alike. Resumable: an export or bench
whose JSON is already in --work is not run again.

    python -m benchmarks.before_after --before fb689e6 --after HEAD --work bench-results/tmp/before_after \\
        --runs onnx:int4 onnx:int8 executorch:8da4w coreml:w4 gguf:q4_k_m        # bench-results/before_after.json
    python -m benchmarks.before_after --before HEAD~1 --runs gguf:q8_0 --model random:tiny --eval-tokens 64 \\
        --rounds 1 --bench-runs 1 --work /tmp/ba --out /tmp/before_after.json     # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT, add_output_args, envelope, output_path, script_name, write

SCRIPT = script_name(__file__)
SIDES = ("before", "after")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def worktree(work: Path, side: str, rev: str) -> tuple[Path, str]:
    """A detached worktree of `rev` and its commit (reused when it is already there at that commit)."""
    path, commit = work / "trees" / side, git(ROOT, "rev-parse", rev)
    if not path.is_dir():
        git(ROOT, "worktree", "add", "--detach", "-f", str(path), commit)
    elif git(path, "rev-parse", "HEAD") != commit:
        raise SystemExit(f"{path} holds another commit than {rev}: remove it (git worktree remove) or use another --work")
    return path, commit


def cli(tree: Path | None, *args: str) -> dict:
    """`smolship ...` with `tree`'s package first on the path (None: this tree); its --json output."""
    env = dict(os.environ, PYTHONPATH=str(tree or ROOT))
    proc = subprocess.run([sys.executable, "-m", "smolship.cli", *args, "--json"], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"smolship {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def cached(path: Path, run) -> dict:
    if path.is_file() and path.stat().st_size:
        return json.loads(path.read_text())
    result = run()
    path.write_text(json.dumps(result))
    return result


def decode_medians(benches: list[dict]) -> dict:
    """{threads: median decode tok/s} over every bench run of one bundle."""
    by_threads: dict[int, list[float]] = {}
    for b in benches:
        for r in b["rows"]:
            if r.get("decode_tok_s"):
                by_threads.setdefault(r["threads"], []).append(r["decode_tok_s"])
    return {t: round(statistics.median(v), 1) for t, v in sorted(by_threads.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--runs", nargs="+", required=True, help="target:recipe")
    ap.add_argument("--model", default=None, help="any `smolship export` model (default: the bundled SmolLM2-135M-Instruct)")
    ap.add_argument("--work", type=Path, default=Path("bench-results/tmp/before_after"))
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bench-runs", type=int, default=3)
    add_output_args(ap)
    args = ap.parse_args()
    out_file = output_path(args, SCRIPT)
    if bad := [r for r in args.runs if r.count(":") != 1]:
        ap.error(f"--runs takes TARGET:RECIPE (got {', '.join(bad)})")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    trees, commits = {}, {}
    for side, rev in zip(SIDES, (args.before, args.after)):
        trees[side], commits[side] = worktree(work, side, rev)
    exports = {}
    for run in args.runs:
        target, recipe = run.split(":")
        for side in SIDES:
            exports[side, run] = cached(work / f"{side}-{target}-{recipe}.json", lambda: cli(
                trees[side], "export", *([args.model] if args.model else []), "--target", target, "--quant", recipe, "--out", str(work / side),
                "--eval-tokens", str(args.eval_tokens), "--force"))["rows"][0]
    benches: dict[tuple, list] = {}
    for rnd in range(1, args.rounds + 1):
        for run in args.runs:
            bundle = exports["before", run]["bundle"]
            for side in (SIDES if rnd % 2 else SIDES[::-1]):
                benches.setdefault((side, run), []).append(cached(
                    work / f"bench-{rnd}-{side}-{bundle}.json",
                    lambda: cli(None, "bench", str(work / side / bundle), "--threads", "1", "--threads", "2",
                                "--runs", str(args.bench_runs))))
    rows = []
    for run in args.runs:
        row = {"run": run}
        for side in SIDES:
            e = exports[side, run]
            manifest = json.loads((work / side / e["bundle"] / "manifest.json").read_text())
            row[side] = {"size_mb": e["size_mb"], "kld_mean": e["kld_mean"], "top1_agreement": e["top1_agreement"],
                         "decode_tok_s": decode_medians(benches.get((side, run), [])),
                         "model_files": {f: manifest["files"][f]["sha256"] for f in manifest["files"]
                                         if f.split("/")[0] in manifest["model_files"]}}
        row["same_model_bytes"] = row["before"]["model_files"] == row["after"]["model_files"]
        rows.append(row)
        print(f"{run:<20} {row['before']['size_mb']:>8} -> {row['after']['size_mb']:<8} MB  kld "
              f"{row['before']['kld_mean']:.6g} -> {row['after']['kld_mean']:.6g}  decode "
              f"{row['before']['decode_tok_s']} -> {row['after']['decode_tok_s']}")
    write(out_file, envelope(SCRIPT, {"model": args.model or "default", "before": commits["before"],
                                      "after": commits["after"], "eval_tokens": args.eval_tokens, "rounds": args.rounds,
                                      "bench_runs": args.bench_runs}, rows, args.variant))
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
