"""The ONNX target: export -> (quantize) -> save one folder that onnxruntime-genai and transformers.js both load.

Chain: graph_model (nn.Module with genai's I/O) -> export.export_onnx (torch.onnx dynamo, contrib ops
via contrib_ops) -> quantize.quantize_model (MatMulNBits / GatherBlockQuantized, rules from
recipes.plan_for) -> export.save_model (onnx/model_q4.onnx etc., external data past ~1.8 GB) ->
genai_config.json + config.json pointing at that file. The pipeline (smolship/export.py) adds
tokenizer.json / tokenizer_config.json (with the chat template) and generation_config.json, which both read.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnxruntime  # noqa: F401  (the registry imports this target only when the runtime is installed)

from smolship.errors import SmolshipError
from smolship.runner import Runner
from smolship.targets.base import ExportOptions, ExportResult, Progress, Recipe, Target, no_progress
from smolship.targets.onnx.recipes import DEFAULT_RECIPES, RECIPES, OnnxKnobs, plan_for


class OnnxTarget(Target):
    name = "onnx"
    extra = "onnx"
    knobs = OnnxKnobs
    recipes = RECIPES
    default_recipes = DEFAULT_RECIPES

    def export(self, model, recipe: Recipe, out_dir: Path, options: ExportOptions,
               progress: Progress = no_progress) -> ExportResult:
        import torch

        from smolship.exporter import calibration
        from smolship.targets.onnx.export import ONNX_DIR, ONNX_FILES, export_onnx, save_model
        from smolship.targets.onnx.genai_config import (genai_config, transformers_js_config, write_genai_config,
                                                        write_hf_config)
        from smolship.targets.onnx.portable import portable_embedding
        from smolship.targets.onnx.quantize import quantize_model

        plan = plan_for(recipe, options, model.config.num_layers)
        graph = plan.graph
        if graph == "fused" and options.max_seq_len > model.config.max_position_embeddings * 4:
            raise SmolshipError(f"--max-seq-len {options.max_seq_len} is far beyond the model's "
                                f"{model.config.max_position_embeddings} positions.", "Use a smaller --max-seq-len.")
        info: dict = {"graph": graph, "dtype": plan.dtype, "past_present_share_buffer": graph == "fused"}
        calib, smooth = None, None
        want_imp, want_hes = plan.quant.needs_calibration() if plan.quant else (False, False)
        if want_imp or want_hes or (plan.smooth_alpha and graph == "fused"):
            progress("calibration", 0.0)
            cal = calibration.calibration_set(model, options.calibration_text)  # held-out text
            calib = calibration.collect(model, cal.sequences, want_hes)
            info["calibration"] = cal.record
            if plan.smooth_alpha and graph == "fused":
                smooth = calibration.smoothing_scales(calib, model.state_dict, model.config.num_layers, plan.smooth_alpha)
                info["smoothquant_alpha"] = plan.smooth_alpha
        progress("torch.onnx export", 0.1)
        dtype = torch.float16 if plan.dtype == "float16" else torch.float32
        onnx_model = export_onnx(model, graph, options.max_seq_len, dtype, smooth,
                                 materialize_lm_head=plan.quant is not None)
        if plan.quant is not None:
            report = quantize_model(onnx_model, plan.quant, calib, tied=model.config.tie_word_embeddings,
                                    progress=lambda d, f: progress(d, 0.4 + 0.5 * f))
            info["quant"] = {**report.as_info(), "accuracy_level": plan.quant.accuracy_level,
                             "layers_as": "DequantizeLinear+MatMul" if plan.quant.standard_ops else "MatMulNBits"}
            # onnxruntime-web has no 8-bit GatherBlockQuantized: the embedding is standard ops either way
            info["portable_embedding"] = plan.quant.standard_ops or portable_embedding(onnx_model) > 0
        info["ops"] = dict(Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in onnx_model.graph))
        progress("saving", 0.95)
        tjs_dtype, file_name = ONNX_FILES[recipe.name]
        written = save_model(onnx_model, Path(out_dir) / ONNX_DIR, file_name=file_name,
                             aliases=report.aliases if plan.quant is not None else None)
        model_file = f"{ONNX_DIR}/{file_name}"
        write_genai_config(out_dir, genai_config(model, model_file, options.max_seq_len, graph == "fused"))
        write_hf_config(out_dir, transformers_js_config(model, tjs_dtype, model_file, len(written) > 1))
        info["transformers_js_dtype"] = tjs_dtype
        return ExportResult(files=[ONNX_DIR, "genai_config.json", "config.json"], info=info)

    def load_runner(self, bundle: Path, manifest: dict, threads: int | None = None, **session) -> Runner:
        """`session`: OnnxRunner's session_config / optimized_path (e.g. runner.BROWSER_FOLD)."""
        from smolship.targets.onnx.runner import open_bundle

        return open_bundle(bundle, manifest, threads, **session)

    def runtime_versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime as ort
        import torch

        versions = {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "torch": torch.__version__}
        try:
            import onnxruntime_genai as og

            versions["onnxruntime_genai"] = og.__version__
        except ImportError:
            pass
        return versions
