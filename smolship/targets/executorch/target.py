"""The ExecuTorch target: one XNNPACK-delegated ``model.pte`` per recipe, validated in executorch.runtime.

Chain (each step its own module): swap attention onto ExecuTorch's custom ops (ops.py) ->
quantize by plan (quantize.py) -> torch.export with a dynamic token dimension -> XNNPACK lowering
and serialization (lower.py, partition.py). The `.pte` carries the constant methods ExecuTorch's
LLM runner reads, so it runs in the Android / iOS demo apps with the bundle's tokenizer.json.

Knobs in ``ExportOptions.extra``: `ExecuTorchKnobs` below (typed, checked before any work).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import executorch  # noqa: F401  (the registry imports this module only when executorch is installed)

from smolship.errors import SmolshipError
from smolship.targets.base import (
    ExportOptions,
    ExportResult,
    Precision,
    Progress,
    Recipe,
    Target,
    no_progress,
)
from smolship.targets.executorch import quantize as Q
from smolship.targets.executorch.runner import ExecuTorchRunner
from smolship.targets.knobs import knob
from smolship.process_stats import peak_rss_mb

MODEL_FILE = "model.pte"

RECIPES = {
    "fp32": Recipe("fp32", Precision.FP32, "fp32 weights and activations; XNNPACK fp32 GEMMs"),
    "8da8w": Recipe("8da8w", Precision.INT8, "int8 per-channel weights over block-mean offsets (GPTQ) with int8 "
                    "dynamic activations after SmoothQuant (v_proj, o_proj, down_proj weight-only), two-plane "
                    "int8 lm_head, 8-bit embedding"),
    "8da4w": Recipe("8da4w", Precision.INT4, "asymmetric int4 weights (groups of 32, importance-searched float zero) with int8 dynamic "
                    "activations, int8 lm_head (int8 dynamic activations), asymmetric 4-bit embedding"),
    "int8": Recipe("int8", Precision.INT8, "int8 per-channel weight-only linears (GPTQ; fp32 activations), "
                   "two-plane int8 lm_head, 8-bit embedding"),
}

# Which linears get which scheme, chosen by measurement on the default model (eager kld_mean on 2,048
# eval tokens, calibrated on held-out text): int8 activations of v_proj, o_proj and down_proj cost the
# most KL, so they stay float (0.0099 -> 0.0046 with SmoothQuant alpha 0.5 and GPTQ; alpha 0.3: 0.0058,
# 0.75: 0.0075). Per-channel int8 cannot hold the default model's blocks (Q4_1 layers, Q8_0 embedding):
# int8 of the weights minus their block means (8da8w-off / w8-off) takes 8da8w from 0.0044 to 0.0042
# (int8: no gain), and a second int8 plane on the tied lm_head (w8x2, +28 MB) 0.0042 -> 0.0034 and
# int8 0.0039 -> 0.0030, the same as a float head (teacher-forced eager figures, 2,048 tokens).
# 8da4w (benchmarks/executorch_front.py, the programs in executorch.runtime, 2,048 tokens): block offsets
# keep the Q4_1 grid (kld 0.029) where symmetric int4 re-rounds it (0.37; on q/k only: 0.060); an int4
# lm_head saves 11.5 MB but costs 0.029 -> 0.088 for a few % of decode speed, so it stays int8. With
# int8 dynamic activations (qd8-f32-qc8w) the head decodes 5% faster than weight-only (4,096 tokens:
# kld 0.0337 -> 0.0357, 176 -> 186 tok/s on 1 thread); GPTQ on it buys 0.0362 -> 0.0357 for 10 s of
# calibration, so it is rounded to nearest (export 112 s).
# Off the grid (issue 19; benchmarks/offgrid_screen.py, eager, int8 dynamic activations, 768 tokens): the
# min/max blocks give kld 0.331; the importance-weighted float-zero search (quant.grids.affine_search, the
# Hessian diagonal of held-out text as weights) 0.155, on the default model 0.0345 -> 0.0360 (its blocks
# are kept up to the bf16 scale rounding). GPTQ on top over-fits the held-out text (ONNX: 0.104 -> 0.138).
# 8-bit layers (quant/mixed.py) do not fit: this recipe is at 109 MB with two vocab-sized tables (the
# XNNPACK head cannot serve the embedding lookup), so the off-grid front is in issue 19's closing note.
PLANS = {
    "fp32": Q.QuantPlan(),
    "8da8w": Q.QuantPlan(rules=(("lm_head", Q.W8X2), (r".*\.(v_proj|o_proj|down_proj)", Q.W8_OFF),
                                (r".*", Q.W8DA8_OFF)), embedding=Q.EMB8, smooth_alpha=0.5),
    "8da4w": Q.QuantPlan(rules=(("lm_head", Q.W8DA8_RTN), (r".*", Q.W8DA4_SEARCH)), embedding=Q.EMB4),
    "int8": Q.QuantPlan(rules=(("lm_head", Q.W8X2), (r".*", Q.W8)), embedding=Q.EMB8),
}


DEFAULT_MAX_PREFILL = 256


def max_prefill_len(options: ExportOptions) -> int:
    """Tokens per forward call (the prefill chunk): extra["max_prefill_len"], at most the cache."""
    return min(int((options.extra or {}).get("max_prefill_len", DEFAULT_MAX_PREFILL)), options.max_seq_len)


def check_options(model, options: ExportOptions) -> None:
    if options.max_seq_len < 2:
        raise SmolshipError(f"--max-seq-len {options.max_seq_len} is too small for an ExecuTorch program.",
                            "Use at least 2 (2048 is the default).")
    g = int((options.extra or {}).get("group_size", 32))
    if g % 32 or model.config.hidden_size % g or model.config.intermediate_size % g:
        raise SmolshipError(f"group_size {g} does not fit: XNNPACK needs a multiple of 32 that divides "
                            f"hidden {model.config.hidden_size} and intermediate {model.config.intermediate_size}.",
                            "Use group_size 32 (the default) or another multiple of 32 that divides both.")


CALIBRATION_TOKENS = 4096


def calibrate(model, llama, plan: Q.QuantPlan, options: ExportOptions) -> tuple[list[list[int]] | None, dict | None]:
    """Fold SmoothQuant scales into `llama` (when the plan smooths) and return the token sequences GPTQ
    calibrates on (when any scheme asks for it) with the manifest's record of that text
    (exporter.calibration.calibration_set: held-out text unless ExportOptions.calibration_text)."""
    if not plan.smooth_alpha and not plan.wants_gptq():
        return None, None
    from smolship.exporter import calibration

    cal = calibration.calibration_set(model, options.calibration_text, max_tokens=CALIBRATION_TOKENS,
                                      doc_tokens=min(256, llama.max_seq_len))  # GPTQ runs them through `llama`
    seqs = cal.sequences
    if plan.smooth_alpha:
        stats = calibration.collect(model, seqs, want_hessian=False)
        scales = calibration.smoothing_scales(stats, model.state_dict, model.config.num_layers, plan.smooth_alpha)
        Q.fold_smoothing(llama, scales)
    return (seqs if plan.wants_gptq() else None), cal.record


@dataclass(frozen=True)
class ExecuTorchKnobs:
    """ExportOptions.extra for ExecuTorch (quantize.with_overrides applies the quantization ones)."""

    embedding_bits: int | None = knob(None, "4 | 8: bits of the quantized embedding (default: the recipe's)")
    lm_head: str | None = knob(None, "scheme of the lm_head: w8 | w8-rtn | w8x2 | 8da8w | 8da8w-rtn | 8da4w | 8da4w-sym | fp32")
    group_size: int | None = knob(None, "4-bit group size, a multiple of 32 dividing hidden and intermediate (default 32)")
    rules: list = knob([], "[[regex, scheme | 'fp32'], ...] on linear names, checked before the recipe's own rules")
    smooth_alpha: float | None = knob(None, "SmoothQuant alpha (0 = off; default: the recipe's)")
    max_prefill_len: int | None = knob(None, "tokens per forward call (default 256: it sizes the activation memory)")


class ExecuTorchTarget(Target):
    name = "executorch"
    extra = "executorch"
    knobs = ExecuTorchKnobs
    recipes = RECIPES
    default_recipes = ("8da8w", "8da4w")

    def export(self, model, recipe: Recipe, out_dir: Path, options: ExportOptions,
               progress: Progress = no_progress) -> ExportResult:
        from smolship.targets.executorch import lower
        from smolship.targets.executorch.ops import ExportLlama

        check_options(model, options)
        plan = Q.with_overrides(PLANS[recipe.name], options.extra or {}, options.keep_embeddings_fp)
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
        ep = lower.export_graph(ExportLlama(llama), prefill_len)
        t_export = time.perf_counter()
        progress("lowering to XNNPACK", 0.45)
        methods = lower.constant_methods(model.tokenizer, model.config.vocab_size, options.max_seq_len, prefill_len)
        edge = lower.lower_to_xnnpack(ep, methods)
        t_lower = time.perf_counter()
        progress("serializing", 0.85)
        data, program = lower.to_pte_bytes(edge)
        delegation = lower.op_counts(program)
        lower.check_delegated(delegation)
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
        return ExecuTorchRunner(Path(bundle) / MODEL_FILE, manifest["max_seq_len"], threads=threads)

    def runtime_versions(self) -> dict[str, str]:
        from importlib.metadata import version

        out = {}
        for pkg in ("executorch", "torchao", "torch"):
            try:
                out[pkg] = version(pkg)
            except Exception:  # a source build without metadata
                out[pkg] = "unknown"
        return out
