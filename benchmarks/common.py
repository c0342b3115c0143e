"""One result format for every benchmark script (llama-bench's lesson: rows that compare across time), and
the helpers several scripts share.

A result is a JSON object that starts with the build: the git commit and whether the tree was dirty; then which
script (and variant) wrote it, when, the command, the machine (cores, load while it ran, library versions), the
settings, and `rows`, always a list of dicts (one measurement each; a name column where rows were keyed).
It lives in bench-results/SCRIPT.json, or bench-results/SCRIPT-VARIANT.json for a named variant of a run
(e.g. onnx_anchor-offgrid.json); history is git's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEMA = "smolship-bench/2"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"
VARIANT_RE = re.compile(r"[a-z0-9][a-z0-9_.]*(-[a-z0-9_.]+)*")  # file-name safe; "-" separates it from the script


def script_name(file: str) -> str:
    """The script's name as results carry it: benchmarks/onnx_anchor.py -> onnx_anchor."""
    return Path(file).stem


def result_path(script: str, variant: str | None = None) -> Path:
    """Where a script's results live: bench-results/SCRIPT.json or bench-results/SCRIPT-VARIANT.json."""
    return RESULTS / (f"{script}-{variant}.json" if variant else f"{script}.json")


# --- the result format --------------------------------------------------------------------------------------

def git_commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def machine() -> dict:
    from smolship.validation.report import machine_info

    info = machine_info()
    info["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]  # a loaded machine makes tok/s noisy
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def envelope(script: str, settings: dict, rows: list[dict], variant: str | None = None, **extra) -> dict:
    """The result of one benchmark run: the commit first (like llama-bench's build_commit), then the rest."""
    result = {**git_commit(), "script": script, "variant": variant, "schema": SCHEMA,
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python -m", f"benchmarks.{script}", *sys.argv[1:]]),
              "machine": machine(), "settings": settings, "rows": rows, **extra}
    if problems := layout_problems(result):
        raise ValueError(f"{script}: not the one result format: {'; '.join(problems)}")
    return result


def layout_problems(result, filename: str | None = None) -> list[str]:
    """What keeps `result` (and its file name, when given) from the one format; [] when it is in it."""
    if not isinstance(result, dict):
        return [f"a result is a JSON object, not {type(result).__name__}"]
    problems = []
    if next(iter(result), None) != "commit":
        problems.append("the first key is not 'commit'")
    if not (isinstance(result.get("commit"), str) and re.fullmatch(r"[0-9a-f]{40}", result["commit"])):
        problems.append(f"commit {result.get('commit')!r} is not a full git hash")
    if result.get("schema") != SCHEMA:
        problems.append(f"schema {result.get('schema')!r} is not {SCHEMA!r}")
    for key in ("script", "machine", "settings", "created"):
        if key not in result:
            problems.append(f"no '{key}'")
    rows = result.get("rows")
    if not isinstance(rows, list):
        problems.append(f"rows is a {type(rows).__name__}, not a list")
    elif not all(isinstance(r, dict) for r in rows):
        problems.append("a row is not a dict")
    variant = result.get("variant")
    if variant is not None and not (isinstance(variant, str) and VARIANT_RE.fullmatch(variant)):
        problems.append(f"variant {variant!r} is not a lower-case name")
    if "migrated" in result:
        problems.append("a 'migrated' result (converted, never produced by a run)")
    if filename is not None and isinstance(result.get("script"), str):
        want = f"{result['script']}-{variant}.json" if variant else f"{result['script']}.json"
        if filename != want:
            problems.append(f"named {filename}, but its script and variant name it {want}")
    return problems


def write(path: Path, result: dict) -> None:
    """Written whole or not at all (a killed run keeps the previous file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)


def merged_rows(path: Path, rows: list, key) -> list:
    """The file's rows with this run's laid over them: rows with the same key(row) replaced, the others kept
    (a sweep run in parts, or cut short, keeps what every part measured)."""
    path = Path(path)
    new = {key(r) for r in rows}
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    return [r for r in old if key(r) not in new] + rows


def named_rows(table: dict[str, dict], column: str = "name", **fixed) -> list[dict]:
    """{name: row} -> [{**fixed, column: name, **row}]: keyed tables become rows."""
    return [{**fixed, column: name, **row} for name, row in table.items()]


# --- command lines ------------------------------------------------------------------------------------------

def add_output_args(ap: argparse.ArgumentParser) -> None:
    """--out and --variant: results go to bench-results/SCRIPT[-VARIANT].json unless --out says otherwise."""
    ap.add_argument("--variant", default=None, help="name of this run's variant: results go to "
                    "bench-results/SCRIPT-VARIANT.json (e.g. offgrid)")
    ap.add_argument("--out", type=Path, default=None, help="results file (default: bench-results/SCRIPT[-VARIANT].json; "
                    "use another path for trial runs, e.g. on random:tiny)")


def output_path(args: argparse.Namespace, script: str) -> Path:
    if args.variant is not None and not VARIANT_RE.fullmatch(args.variant):
        sys.exit(f"--variant {args.variant!r}: use lower-case letters, digits, '_' , '.' and '-' only")
    return args.out if args.out is not None else result_path(script, args.variant)


def add_model_arg(ap: argparse.ArgumentParser, what: str = "model spec") -> None:
    ap.add_argument("--model", default=None,
                    help=f"{what} (default: the real SmolLM2-135M-Instruct; random:tiny for a quick check)")


def require_python(python: str, check: str, what: str, fix: str) -> None:
    """Stop with a message, not a traceback, when `python` cannot run `check` (a separate environment that
    holds a package smolship's own cannot: optimum-executorch, onnxruntime-genai's builder on transformers 5)."""
    if not Path(python).is_file() and not any((Path(d) / python).is_file() for d in os.environ["PATH"].split(":")):
        sys.exit(f"{what}: the interpreter {python} does not exist.\n{fix}")
    proc = subprocess.run([python, "-c", check], capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        sys.exit(f"{what}: {python} cannot run it ({why}).\n{fix}")


def check_export_options(target: str, extras: list[dict], where: str = "") -> None:
    """The ExportOptions.extra a script will pass, checked by the target's typed knobs before any work;
    `where`: which part of the script passes them (named in the message)."""
    from smolship.errors import SmolshipError
    from smolship.targets import get_target
    from smolship.targets.knobs import parse

    t = get_target(target)
    for extra in extras:
        try:
            parse(t.knobs, extra, target)
        except SmolshipError as e:
            sys.exit(f"{where + ': ' if where else ''}{target} option {extra} is refused by this smolship: "
                     f"{e.problem}\n{e.fix}")


# --- shared measurement pieces ------------------------------------------------------------------------------

def timed_child(cmd: list[str], env: dict | None = None, stdout=subprocess.DEVNULL) -> tuple[float, float, int, str]:
    """Run `cmd`: (wall seconds, peak RSS MB of that child alone (os.wait4), exit code, stderr tail)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        tail = "\n".join(err.read().strip().splitlines()[-15:])
    return round(time.perf_counter() - t0, 1), round(usage.ru_maxrss / 1024, 1), os.waitstatus_to_exitcode(status), tail


def save_hf_folder(source, folder: Path) -> Path:
    """The source as a Hugging Face folder (config.json + model.safetensors + tokenizer files): what other
    exporters (onnxruntime-genai's builder, optimum-executorch) read."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    hf = {**source.config.to_hf(), "bos_token_id": source.tokenizer.bos_id, "eos_token_id": source.tokenizer.eos_id}
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    tensors = {(k if k.startswith("lm_head") else f"model.{k}"): v.contiguous() for k, v in source.state_dict.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    source.tokenizer.save(folder)
    (folder / "generation_config.json").write_text(json.dumps(source.tokenizer.generation_config(), indent=2))
    return folder


def parity_of(runner, validator, keys) -> dict:
    """`keys` of the runner's parity against the validator's reference on its eval docs; closes the runner."""
    from smolship.validation.parity import measure_parity

    try:
        p = measure_parity(runner, validator.reference, validator.docs, validator.settings.parity)
    finally:
        runner.close()
    return {k: p[k] for k in keys}
