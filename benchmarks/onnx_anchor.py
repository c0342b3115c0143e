"""ONNX target vs onnxruntime-genai's own model builder, side by side, on the same weights and machine.

Sections (pick with --sections, default: anchor fused front):
* anchor - the builder (`python -m onnxruntime_genai.models.builder -p int4 -e cpu`) on the source
  saved as a Hugging Face folder, against our int4 and int8: kld_mean, top-1, size, prefill/decode
  tok/s at 1 and 2 threads, and the ratios ours / builder.
* fused  - the plain graph (standard ONNX ops, concatenated cache) against the fused graph
  (GroupQueryAttention + shared KV buffer + SkipSimplifiedLayerNorm), in fp32: the speed gain. (The
  quantization rules name the fused graph's weights, so only the fused graph is quantized.)
* front  - every int4 recipe tried (RTN symmetric / asymmetric, MSE grid, GPTQ, 8-bit sensitive
  layers), size vs kld_mean, so the shipped point is a measured choice.
* big    - a random SmolLM2-1.7B config exported in fp32 (external data) and validated on a short eval.

The builder needs transformers>=5 (smolship pins 4.57.6), so section anchor runs it from its own
interpreter (--builder-python, default /tmp/bvenv/bin/python), made once:
    python -m venv /tmp/bvenv && echo "$(python -c 'import site; print(site.getsitepackages()[0])')" \
        > /tmp/bvenv/lib/python3.11/site-packages/zz_smolship.pth && /tmp/bvenv/bin/pip install transformers==5.24.0
Without it the script stops before any work and says so (or run --sections fused front).
Latency runs in this process, interleaving the contenders (best of --repeats medians), so load from
other processes hits all of them alike. Rows: one per (section, name); `ratios` ours / builder. Example:
    python -m benchmarks.onnx_anchor --eval-tokens 4096 --threads 1 2             # bench-results/onnx_anchor.json
    python -m benchmarks.onnx_anchor --model offgrid:smollm2-135m --variant offgrid --sections anchor
    python -m benchmarks.onnx_anchor --model random:tiny --eval-tokens 64 --threads 1 --repeats 1 \
        --sections fused front --out /tmp/onnx_anchor.json                       # a quick check
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import time
from pathlib import Path

from benchmarks.common import (add_model_arg, add_output_args, check_export_options, envelope, named_rows,
                               output_path, parity_of, require_python, save_hf_folder, script_name, write)
from smolship.export import export_bundle
from smolship.exporter import load_model
from smolship.targets import ExportOptions, get_target
from smolship.targets.onnx.genai_config import read_genai_config
from smolship.targets.onnx.runner import OnnxRunner
from smolship.validation.latency import LatencySettings, measure_latency
from smolship.validation.parity import ParitySettings
from smolship.validation.validate import ValidationSettings, Validator

FRONT = {  # name -> ExportOptions.extra for the int4 recipe
    "rtn-sym": {"int4_method": "rtn", "int4_symmetric": True},
    "rtn-asym": {"int4_method": "rtn"},
    "mse-asym": {"int4_method": "mse"},
    "gptq-asym": {"int4_method": "gptq"},
    "offset (default)": {"int4_method": "offset"},
    "offset, layers 0-1 8-bit": {"int4_method": "offset", "int4_eight_bit": [r"layers\.(0|1)\.\w+"]},
    "offset, 4-bit lm_head/embedding": {"int4_method": "offset", "lm_head_bits": 4},
}


SCRIPT = script_name(__file__)
BUILDER_PYTHON = "/tmp/bvenv/bin/python"
PARITY_KEYS = ("kld_mean", "kld_p99", "top1_agreement", "max_abs_logit_diff")
GRAPHS = ("plain", "fused")


def build_with_builder(hf_dir: Path, out: Path, precision: str = "int4", python: str = BUILDER_PYTHON) -> Path:
    """onnxruntime-genai 0.18's builder imports transformers 5 model classes: pass --builder-python of an
    environment that has transformers>=5 (smolship pins 4.57.6), e.g. a venv whose .pth adds ours."""
    if not (out / "genai_config.json").is_file():
        cmd = [python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(out.parent / "builder_cache")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"the builder failed:\n{proc.stderr[-3000:]}")
    return out


def folder_runner(folder: Path, threads: int | None = None) -> OnnxRunner:
    """A Runner over any genai model folder (ours or the builder's), driven by its genai_config.json."""
    gc_ = read_genai_config(folder)
    dec = gc_["model"]["decoder"]
    return OnnxRunner(folder / dec["filename"], dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"],
                      min(gc_["model"]["context_length"], 2048), gc_["search"]["past_present_share_buffer"],
                      threads=threads)


def model_mb(folder: Path) -> float:
    """Graph + external data wherever the folder keeps them (ours: onnx/model_q4.onnx(_data); the builder's: model.onnx(.data))."""
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and ".onnx" in p.name) / 1e6, 1)


def ours(source, recipe: str, out: Path, extra: dict | None = None) -> Path:
    target = get_target("onnx")
    path, _ = export_bundle(source, "onnx", target.recipes[recipe], out, ExportOptions(extra=extra or {}),
                            validator=None, force=True)
    return path


def parity(validator: Validator, folder: Path) -> dict:
    return {k: round(v, 5) for k, v in parity_of(folder_runner(folder, threads=2), validator, PARITY_KEYS).items()}


def latency(folders: dict[str, Path], threads: int, repeats: int, vocab: int) -> dict[str, dict]:
    """Interleaved: each round measures every contender once; keep each one's best round."""
    best: dict[str, dict] = {}
    settings = LatencySettings(prompt_tokens=128, new_tokens=128, runs=3, threads=threads)
    for _ in range(repeats):
        for name, folder in folders.items():
            runner = folder_runner(folder, threads=threads)
            r = {k: v for k, v in measure_latency(runner, vocab, settings).items() if k in ("prefill_tok_s", "decode_tok_s")}
            if threads == 1:
                r["decode_tok_per_cpu_s"] = cpu_decode_rate(runner)
            runner.close()
            if name not in best or r["decode_tok_s"] > best[name]["decode_tok_s"]:
                best[name] = r
            gc.collect()
    return best


def cpu_decode_rate(runner, prompt_len: int = 128, steps: int = 64) -> float:
    """Decode tokens per CPU-second of this process (1 thread): robust to other processes' load."""
    tok = int(runner.prefill(list(range(100, 100 + prompt_len)))[-1].argmax())
    t0 = time.process_time()
    for _ in range(steps):
        tok = int(runner.decode(tok).argmax())
    return round(steps / (time.process_time() - t0), 1)


def section_anchor(source, validator, out: Path, args) -> dict:
    hf = save_hf_folder(source, out / "hf")
    rows = {f"builder-{p}": build_with_builder(hf, out / f"builder-{p}", p, args.builder_python)
            for p in args.builder_precisions}
    rows["ours-int4"] = ours(source, "int4", out / "ours")
    rows["ours-int8"] = ours(source, "int8", out / "ours")
    rows["ours-int4-head4"] = ours(source, "int4", out / "ours-head4", {"lm_head_bits": 4})  # speed point
    # the int4 default before issue 19 (min/max float-zero blocks, no 8-bit layers): the before/after row
    rows["ours-int4-before"] = ours(source, "int4", out / "ours-before", {"int4_method": "offset", "int4_eight_bit": []})
    table = {name: {"size_mb": model_mb(f), **parity(validator, f)} for name, f in rows.items()}
    for t in args.threads:
        for name, r in latency(rows, t, args.repeats, source.config.vocab_size).items():
            table[name][f"prefill_tok_s@{t}"] = r["prefill_tok_s"]
            table[name][f"decode_tok_s@{t}"] = r["decode_tok_s"]
            if "decode_tok_per_cpu_s" in r:
                table[name][f"decode_tok_per_cpu_s@{t}"] = r["decode_tok_per_cpu_s"]
    b, o = table["builder-int4"], table["ours-int4"]
    ratios = {
        "kld_mean": round(o["kld_mean"] / b["kld_mean"], 4), "size": round(o["size_mb"] / b["size_mb"], 3),
        **{f"decode@{t}": round(o[f"decode_tok_s@{t}"] / b[f"decode_tok_s@{t}"], 3) for t in args.threads}}
    if 1 in args.threads:
        ratios["decode_per_cpu_s@1"] = round(o["decode_tok_per_cpu_s@1"] / b["decode_tok_per_cpu_s@1"], 3)
    args.ratios["int4 ours/builder"] = ratios
    return table


def section_fused(source, validator, out: Path, args) -> dict:
    rows = {}
    for graph in GRAPHS:  # ExportOptions.extra["graph"]: what targets/onnx/target.py reads
        rows[f"{graph}-fp32"] = ours(source, "fp32", out / f"graph-{graph}", {"graph": graph})
    table = {name: {"size_mb": model_mb(f)} for name, f in rows.items()}
    for name, r in latency(rows, args.threads[0], args.repeats, source.config.vocab_size).items():
        table[name].update(r)
    return table


def section_front(source, validator, out: Path, args) -> dict:
    table = {}
    for name, extra in FRONT.items():
        t0 = time.time()
        folder = ours(source, "int4", out / f"front-{name.split()[0].strip(',')}-{len(table)}", extra)
        table[name] = {"size_mb": model_mb(folder), **parity(validator, folder), "export_s": round(time.time() - t0, 1)}
        print(name, table[name], flush=True)
    return table


def section_big(args, out: Path) -> dict:
    source = load_model("random:smollm2-1.7b")
    t0 = time.time()
    path, manifest = export_bundle(source, "onnx", get_target("onnx").recipes["fp32"], out / "big",
                                   ExportOptions(max_seq_len=256), validator=None, force=True)
    export_s = time.time() - t0
    del source.state_dict
    gc.collect()
    source = load_model("random:smollm2-1.7b")
    v = Validator(source, ValidationSettings(eval_tokens=160, measure_latency=False,
                                             parity=ParitySettings(greedy_prompts=1, greedy_tokens=8)))
    return {"files": manifest["model_files"], "size_mb": model_mb(path), "export_s": round(export_s, 1),
            **parity(v, path)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/onnx_anchor"), help="where bundles are built")
    ap.add_argument("--sections", nargs="+", default=["anchor", "fused", "front"],
                    choices=["anchor", "fused", "front", "big"])
    add_model_arg(ap)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--builder-precisions", nargs="+", default=["int4"])
    ap.add_argument("--builder-python", default=BUILDER_PYTHON,
                    help="interpreter with transformers>=5 for onnxruntime_genai.models.builder (section anchor)")
    add_output_args(ap)
    args = ap.parse_args()
    out_file = output_path(args, SCRIPT)
    # everything that needs another environment or a newer smolship fails here, before minutes of work
    if "anchor" in args.sections:
        require_python(args.builder_python,
                       "import transformers, onnxruntime_genai.models.builder as b; "
                       "assert int(transformers.__version__.split('.')[0]) >= 5, 'transformers ' + transformers.__version__",
                       "section anchor needs onnxruntime-genai's model builder on transformers>=5",
                       "Make that interpreter as this script's docstring shows (python -m benchmarks.onnx_anchor "
                       "--help), pass it with --builder-python, or leave the section out: --sections fused front.")
    extras = {"anchor": [{"lm_head_bits": 4}, {"int4_method": "offset", "int4_eight_bit": []}],
              "fused": [{"graph": g} for g in GRAPHS],  # the issue 27 fix makes `graph` a typed onnx knob
              "front": list(FRONT.values())}
    for name in (n for n in args.sections if n in extras):
        check_export_options("onnx", extras[name], f"section {name} (leave it out with --sections)")
    args.work.mkdir(parents=True, exist_ok=True)
    args.ratios = {}
    rows: list[dict] = []
    if set(args.sections) - {"big"}:
        source = load_model(args.model)
        validator = Validator(source, ValidationSettings(eval_tokens=args.eval_tokens, measure_latency=False))
        for name in ("anchor", "fused", "front"):
            if name in args.sections:
                table = globals()[f"section_{name}"](source, validator, args.work, args)
                rows += named_rows(table, section=name)
                print(json.dumps({name: table}, indent=1), flush=True)
    if "big" in args.sections:
        big = section_big(args, args.work)
        rows.append({"section": "big", "name": "random:smollm2-1.7b fp32", **big})
        print(json.dumps({"big": big}, indent=1), flush=True)
    write(out_file, envelope(SCRIPT, {"sections": args.sections, "model": args.model, "eval_tokens": args.eval_tokens,
                                      "threads": args.threads, "repeats": args.repeats}, rows, args.variant,
                             ratios=args.ratios))
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
