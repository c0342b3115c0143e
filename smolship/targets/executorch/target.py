"""The ExecuTorch target: one XNNPACK-delegated ``model.pte`` per recipe, validated in executorch.runtime.

Chain (each step its own module): swap attention onto ExecuTorch's custom ops (ops.py) ->
quantize by plan (quantize.py) -> torch.export with a dynamic token dimension -> XNNPACK lowering
and serialization (export.py, partition.py). The `.pte` carries the constant methods ExecuTorch's
LLM runner reads, so it runs in the Android / iOS demo apps with the bundle's tokenizer.json.

Recipes, their plans and the typed knobs (`ExecuTorchKnobs`, checked before any work): recipes.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import executorch  # noqa: F401  (the registry imports this module only when executorch is installed)

from smolship.errors import SmolshipError
from smolship.targets.base import (
    ExportOptions,
    ExportResult,
    Progress,
    Recipe,
    Target,
    no_progress,
)
from smolship.targets.executorch import quantize as Q
from smolship.targets.executorch.runner import MODEL_FILE, ExecuTorchRunner, open_bundle
from smolship.targets.executorch.recipes import RECIPES, ExecuTorchKnobs, knobs_of, max_prefill_len, plan_for
from smolship.process_stats import peak_rss_mb


def check_options(model, options: ExportOptions) -> None:
    if options.max_seq_len < 2:
        raise SmolshipError(f"--max-seq-len {options.max_seq_len} is too small for an ExecuTorch program.",
                            "Use at least 2 (2048 is the default).")
    g = knobs_of(options).group_size or 32
    if g % 32 or model.config.hidden_size % g or model.config.intermediate_size % g:
        raise SmolshipError(f"group_size {g} does not fit: XNNPACK needs a multiple of 32 that divides "
                            f"hidden {model.config.hidden_size} and intermediate {model.config.intermediate_size}.",
                            "Use group_size 32 (the default) or another multiple of 32 that divides both.")


def calibrate(model, llama, plan: Q.QuantPlan, options: ExportOptions) -> tuple[list[list[int]] | None, dict | None]:
    """Fold SmoothQuant scales into `llama` (when the plan smooths) and return the token sequences GPTQ
    calibrates on (when any scheme asks for it) with the manifest's record of that text
    (exporter.calibration.calibration_set: held-out text unless ExportOptions.calibration_text)."""
    if not plan.smooth_alpha and not plan.wants_statistics():
        return None, None
    from smolship.exporter import calibration

    cal = calibration.calibration_set(model, options.calibration_text,
                                      doc_tokens=min(256, llama.max_seq_len))  # GPTQ runs them through `llama`
    seqs = cal.sequences
    if plan.smooth_alpha:
        stats = calibration.collect(model, seqs, want_hessian=False)
        scales = calibration.smoothing_scales(stats, model.state_dict, model.config.num_layers, plan.smooth_alpha)
        Q.fold_smoothing(llama, scales)
    return (seqs if plan.wants_statistics() else None), cal.record




class ExecuTorchTarget(Target):
    name = "executorch"
    extra = "executorch"
    knobs = ExecuTorchKnobs
    recipes = RECIPES
    default_recipes = ("8da8w", "8da4w")

    def export(self, model, recipe: Recipe, out_dir: Path, options: ExportOptions,
               progress: Progress = no_progress) -> ExportResult:
        from smolship.targets.executorch import export as lowering
        from smolship.targets.executorch.ops import ExportLlama

        check_options(model, options)
        plan = plan_for(recipe, options)
        t0, cpu0 = time.perf_counter(), time.process_time()
        progress("building model", 0.02)
        llama = model.build(max_seq_len=options.max_seq_len)
        progress("calibrating", 0.03)
        calib, calib_record = calibrate(model, llama, plan, options)
        progress("quantizing", 0.05)
        quant = Q.apply_plan(llama, plan, calib)
        t_quant = time.perf_counter()
        progress("torch.export", 0.25)
        prefill_len = max_prefill_len(options)
        ep = lowering.export_graph(ExportLlama(llama), prefill_len)
        t_export = time.perf_counter()
        progress("lowering to XNNPACK", 0.45)
        methods = lowering.constant_methods(model.tokenizer, model.config.vocab_size, options.max_seq_len, prefill_len)
        edge = lowering.lower_to_xnnpack(ep, methods)
        t_lower = time.perf_counter()
        progress("serializing", 0.85)
        data, program = lowering.to_pte_bytes(edge)
        delegation = lowering.op_counts(program)
        lowering.check_delegated(delegation)
        (Path(out_dir) / MODEL_FILE).write_bytes(data)
        t_end = time.perf_counter()
        info = {
            "quant": {"recipe": recipe.name, "plan": plan.describe(), **quant},
            "calibration": calib_record,
            "delegation": delegation,
            "constant_methods": methods,
            "export_seconds": {"quantize": round(t_quant - t0, 1), "torch_export": round(t_export - t_quant, 1),
                               "lower": round(t_lower - t_export, 1), "serialize": round(t_end - t_lower, 1),
                               "total": round(t_end - t0, 1),
                               "cpu_total": round(time.process_time() - cpu0, 1)},
            "export_peak_rss_mb": peak_rss_mb(),  # this process: source load + quantize + export + lower
        }
        progress("done", 1.0)
        return ExportResult(files=[MODEL_FILE], info=info)

    def load_runner(self, bundle: Path, manifest: dict, threads: int | None = None) -> ExecuTorchRunner:
        return open_bundle(bundle, manifest, threads)

    def runtime_versions(self) -> dict[str, str]:
        from importlib.metadata import version

        out = {}
        for pkg in ("executorch", "torchao", "torch"):
            try:
                out[pkg] = version(pkg)
            except Exception:  # a source build without metadata
                out[pkg] = "unknown"
        return out
