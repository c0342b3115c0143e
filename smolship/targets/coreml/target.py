"""The Core ML target: stateful iOS18 mlprogram in swift-transformers' convention, four recipes.

export = convert (fp16, export.py) -> compress (quantize.py, as recipes.py plans) -> metadata -> save model.mlpackage
-> read the saved package back and check its structure (readback.py). The fp16 conversion of one
source is kept for the next recipe of the same export run, so `--target coreml` with the default
recipes traces and converts once. Validation runs the real runtime on macOS 15+ (runner.py) and,
everywhere, validation.weight_parity over the weights read back as Runners (stored_weights.py).
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import ClassVar

import coremltools as ct
import torch

from smolship.errors import SmolshipError
from smolship.exporter import calibration
from smolship.runner import Runner
from smolship.targets.base import (
    ExportOptions,
    ExportResult,
    Progress,
    Recipe,
    Target,
    no_progress,
)
from smolship.targets.coreml import readback
from smolship.targets.coreml.export import convert, describe
from smolship.targets.coreml.quantize import compress
from smolship.targets.coreml.recipes import RECIPES, CoreMLKnobs, expected_compression, plan_for
from smolship.targets.coreml.runner import CoreMLRunner, runtime_unavailable_reason
from smolship.targets.coreml.reproducible import pin_package, reset_op_names

def hf_config(source) -> dict:
    """config.json beside the package: swift-transformers reads model type and bos/eos ids from it."""
    tok = source.tokenizer
    return {**source.config.to_hf(), "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
            "pad_token_id": tok.pad_id, "torch_dtype": "float16"}


class CoreMLTarget(Target):
    name = "coreml"
    extra = "coreml"
    recipes: ClassVar[dict[str, Recipe]] = {r.name: r for r in RECIPES}
    default_recipes = ("fp16", "w8", "w4")
    knobs = CoreMLKnobs
    runtime_available_reason = "Core ML runs only on macOS 15+"

    # (weakref to source, max_seq_len, saved fp16 package, seconds) of the last conversion. The fp16
    # program lives on disk, not in memory: at 1.7B its weights are 3.4 GB that validation needs.
    _last: tuple | None = None

    def _fp16(self, source, max_seq_len: int, progress: Progress) -> tuple[object, float, bool]:
        last = CoreMLTarget._last
        if last is not None and last[0]() is source and last[1] == max_seq_len and last[2].exists():
            return ct.models.MLModel(str(last[2]), skip_model_load=True), last[3], True
        CoreMLTarget._last = None
        progress("tracing and converting to Core ML (fp16)", 0.0)
        t0 = time.perf_counter()
        reset_op_names()  # reproducible op names (reproducible.py)
        mlmodel = convert(source, max_seq_len)
        seconds = time.perf_counter() - t0
        cache = Path(tempfile.mkdtemp(prefix="smolship-coreml-")) / "fp16.mlpackage"
        weakref.finalize(source, shutil.rmtree, cache.parent, True)  # gone with the source (or at exit)
        mlmodel.save(str(cache))
        CoreMLTarget._last = (weakref.ref(source), max_seq_len, cache, seconds)
        del mlmodel  # the in-memory program (3.4 GB at 1.7B); the saved copy is read lazily
        return ct.models.MLModel(str(cache), skip_model_load=True), seconds, False

    def export(self, model, recipe: Recipe, out_dir: Path, options: ExportOptions,
               progress: Progress = no_progress) -> ExportResult:
        cfg, max_seq_len = model.config, options.max_seq_len
        if not 2 <= max_seq_len <= cfg.max_position_embeddings:
            raise SmolshipError(f"--max-seq-len {max_seq_len} is outside 2..{cfg.max_position_embeddings} for {model.name}.",
                                f"Pass a context length up to the model's {cfg.max_position_embeddings} positions.")
        plan = plan_for(recipe, options, cfg.num_layers)
        fp16, convert_s, reused = self._fp16(model, max_seq_len, progress)
        importance, calibration_record = None, None
        if plan.wants_importance():
            progress("calibration (importance of each input channel, held-out text)", 0.4)
            cal = calibration.calibration_set(model, options.calibration_text)
            stats = calibration.collect(model, cal.sequences, want_hessian=False)
            importance = {p: stats.importance[k] for p in model.state_dict if (k := calibration.stats_key(p)) in stats.importance}
            calibration_record = cal.record
        progress(f"compressing ({recipe.name})", 0.4)
        t0 = time.perf_counter()
        reset_op_names()
        mlmodel, applied = compress(fp16, list(model.state_dict), plan, lambda d, f: progress(d, 0.4 + 0.5 * f),
                                    importance)
        compress_s = time.perf_counter() - t0
        describe(mlmodel, model, recipe, max_seq_len)
        progress("saving model.mlpackage", 0.9)
        t0 = time.perf_counter()
        package = Path(out_dir) / readback.MODEL_FILE
        mlmodel.save(str(package))
        pin_package(package)  # deterministic bytes: protobuf map order, Manifest.json UUIDs
        (Path(out_dir) / "config.json").write_text(json.dumps(hf_config(model), indent=2))
        save_s = time.perf_counter() - t0
        pkg = readback.read_package(package, list(model.state_dict), dense=False)
        plan_info = plan.describe()
        problems = readback.check_structure(pkg, cfg, max_seq_len, expected_compression(plan_info, model.state_dict))
        if problems:
            raise RuntimeError(f"the saved Core ML package is not what was asked for: {problems}")
        io = readback.describe_io(pkg.spec)
        info = {
            "format": "mlprogram", "minimum_deployment_target": "iOS18", "compute_precision": "fp16",
            "io_convention": "huggingface/swift-transformers stateful LanguageModel (inputIds, causalMask -> logits; "
                             "keyCache/valueCache states)",
            "inputs": io["inputs"], "states": io["states"], "metadata": io["metadata"],
            "plan": plan_info, "compressed_weights": len(applied),
            **({"calibration": calibration_record} if calibration_record else {}), "storage": readback.summary(pkg),
            "convert_s": round(convert_s, 1), "conversion_reused": reused,
            "compress_s": round(compress_s, 1), "save_s": round(save_s, 1),
        }
        progress("done", 1.0)
        return ExportResult(files=[readback.MODEL_FILE], info=info)

    def can_run(self) -> tuple[bool, str | None]:
        why = runtime_unavailable_reason()
        return why is None, why

    def load_runner(self, bundle: Path, manifest: dict, threads: int | None = None) -> Runner:
        why = runtime_unavailable_reason()
        if why is not None:
            raise SmolshipError(why, "Copy the bundle to a Mac with macOS 15+ to run it; on this machine, "
                                     "`smolship validate` reports weight_parity instead.")
        return CoreMLRunner(Path(bundle) / readback.MODEL_FILE, manifest["max_seq_len"])

    def runtime_versions(self) -> dict[str, str]:
        versions = {"coremltools": ct.__version__, "torch": torch.__version__}
        if platform.system() == "Darwin":
            versions["macos"] = platform.mac_ver()[0]
        return versions

    def stored_weights(self, bundle: Path, manifest: dict, source):
        from smolship.targets.coreml.stored_weights import CoreMLStoredWeights

        plan_info = (manifest.get("target_info") or {}).get("plan", {})
        return CoreMLStoredWeights(bundle, manifest, source, expected_compression(plan_info, source.state_dict))
