"""The GGUF target: one llama.cpp-ready `model.gguf` per recipe, validated inside llama.cpp itself.

The chain: check the source -> plan each tensor's type (plan.py) -> write with gguf-py (export.py),
either the final file (float and 32-block types) or an intermediate that llama.cpp's own quantizer
turns into a k-quant mixture (quantize.py, with an importance matrix from imatrix.py).

Target-specific knobs in ``ExportOptions.extra``: `GGUFKnobs` in recipes.py (typed, checked before any work).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import llama_cpp  # the registry imports this module only when llama_cpp is installed
import numpy as np

from smolship.errors import SmolshipError
from smolship.targets.base import ExportOptions, ExportResult, Progress, Recipe, Target, no_progress
from smolship.targets.gguf.imatrix import DEFAULT_TOKENS, calibration_chunks, importance_matrix
from smolship.targets.gguf.index import TensorEntry, tensor_bytes, tensor_table
from smolship.targets.gguf.plan import embedding_type, llama_cpp_overrides, plan_tensors
from smolship.targets.gguf.quantize import llama_quantize
from smolship.targets.gguf.recipes import DEFAULT_RECIPES, GGUF_RECIPES, RECIPES, GGUFKnobs, GGUFRecipe, Quantizer
from smolship.targets.gguf.runner import MODEL_FILE, LlamaCppRunner, open_bundle
from smolship.targets.gguf.export import write_gguf
from smolship.targets.knobs import parse

INTERMEDIATE = ".intermediate.gguf"


def check_source(source) -> None:
    g = source.gguf
    if g is None:
        return
    arch = g.fields.get("general.architecture")
    if arch != "llama":
        raise SmolshipError(f"'{Path(g.path).name}' holds a '{arch}' model; the GGUF target writes llama.cpp's "
                            "'llama' architecture only.", "Pass a Llama-architecture model (SmolLM2, Llama, TinyLlama...).")


def gguf_recipe(recipe: Recipe, knobs: GGUFKnobs) -> GGUFRecipe:
    if recipe.name not in GGUF_RECIPES:
        raise SmolshipError(f"The gguf target has no recipe '{recipe.name}'.", f"Choose one of: {', '.join(GGUF_RECIPES)}.")
    grecipe = GGUF_RECIPES[recipe.name]
    if knobs.quantizer == Quantizer.LLAMA_CPP.value and grecipe.weight_type not in ("F32", "F16", "BF16"):
        grecipe = dataclasses.replace(grecipe, quantizer=Quantizer.LLAMA_CPP)
    return grecipe


def copied_tensor_count(out: Path, table: list[TensorEntry], source) -> int:
    """Tensors of `out` whose bytes equal the source GGUF's (checked, not assumed)."""
    if source.gguf is None:
        return 0
    n = 0
    for entry in table:
        s = source.gguf.tensors.get(entry.name)
        if s is not None and s.tensor_type.name == entry.type and int(s.n_bytes) == entry.nbytes \
                and np.array_equal(np.asarray(s.data).view(np.uint8).reshape(-1), tensor_bytes(out, entry)):
            n += 1
    return n


class GGUFTarget(Target):
    name = "gguf"
    extra = "gguf"
    knobs = GGUFKnobs
    recipes = RECIPES
    default_recipes = DEFAULT_RECIPES

    def export(self, model, recipe: Recipe, out_dir: Path, options: ExportOptions,
               progress: Progress = no_progress) -> ExportResult:
        knobs = parse(GGUFKnobs, options.extra, "gguf")
        grecipe = gguf_recipe(recipe, knobs)
        check_source(model)
        plans = plan_tensors(model, grecipe, options.keep_embeddings_fp, knobs)
        out = Path(out_dir) / MODEL_FILE
        context = model.config.max_position_embeddings
        info: dict = {"gguf_file": MODEL_FILE, "quantizer": grecipe.quantizer.value, "llama_ftype": grecipe.ftype}
        if grecipe.quantizer is Quantizer.GGUF_PY:
            info.update(write_gguf(out, model, plans, grecipe.ftype, context, license_=knobs.license, progress=progress))
        else:
            info.update(self._llama_cpp_export(model, grecipe, plans, Path(out_dir), options, knobs, progress))
        progress("gguf: checking", 1.0)
        table = tensor_table(out)  # what was written, read back
        info["tensor_types"] = dict(Counter(t.type for t in table))
        info["embedding_type"] = next(t.type for t in table if t.name == "token_embd.weight")
        info["copied_from_source"] = copied_tensor_count(out, table, model)
        info["tied_embeddings"] = "output.weight" not in {t.name for t in table}
        return ExportResult(files=[MODEL_FILE], info=info)

    def _llama_cpp_export(self, model, grecipe: GGUFRecipe, plans, out_dir: Path, options: ExportOptions,
                          knobs: GGUFKnobs, progress: Progress) -> dict:
        inter = out_dir / INTERMEDIATE
        imatrix, imatrix_info, calibration = None, None, {}
        if knobs.imatrix:
            progress("gguf: importance matrix", 0.0)
            cal = calibration_chunks(model, options.calibration_text, knobs.imatrix_tokens or DEFAULT_TOKENS)
            chunks, calibration = cal.sequences, {"calibration": cal.record}  # recorded as every target does
            imatrix = importance_matrix(model, chunks)
            label = "calibration_text" if options.calibration_text else cal.record["text"]
            imatrix_info = {"dataset": label, "tokens": sum(map(len, chunks)), "entries": len(imatrix)}
        overrides, n_kept = llama_cpp_overrides(plans, grecipe, knobs)
        kv = {}
        if imatrix_info:  # llama-quantize's convention, so other tools see how the file was made
            kv = {"quantize.imatrix.dataset": imatrix_info["dataset"], "quantize.imatrix.entries_count": imatrix_info["entries"],
                  "quantize.imatrix.chunks_count": len(chunks)}
        try:
            write_gguf(inter, model, plans, 0, model.config.max_position_embeddings, extra_kv=kv, license_=knobs.license,
                       progress=lambda d, f: progress(d, 0.5 * f))
            progress("gguf: llama.cpp quantize", 0.5)
            log = llama_quantize(inter, out_dir / MODEL_FILE, grecipe.ftype,
                                 embedding_type=embedding_type(grecipe, options.keep_embeddings_fp, knobs),
                                 tensor_types=overrides, imatrix=imatrix, threads=knobs.threads)
        finally:
            inter.unlink(missing_ok=True)
        return {"imatrix": imatrix_info, **calibration, "source_blocks_kept": n_kept, "tensor_type_overrides": len(overrides),
                "llama_cpp_fallbacks": sum("falling back" in ln for ln in log)}

    def load_runner(self, bundle: Path, manifest: dict, threads: int | None = None) -> LlamaCppRunner:
        return open_bundle(bundle, manifest, threads)

    def runtime_versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"llama_cpp_python": llama_cpp.__version__, "gguf": version("gguf")}
