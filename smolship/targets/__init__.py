"""Target registry: name -> Target class, imported lazily so a missing runtime only hurts its target."""

from __future__ import annotations

import importlib
import importlib.util

from smolship.errors import MissingDependencyError, SmolshipError
from smolship.targets.base import ExportOptions, ExportResult, Precision, Recipe, Target

# name -> (module, class, pip extra, the module that must import)
REGISTRY: dict[str, tuple[str, str, str, str]] = {
    "onnx": ("smolship.targets.onnx.target", "OnnxTarget", "onnx", "onnxruntime"),
    "coreml": ("smolship.targets.coreml.target", "CoreMLTarget", "coreml", "coremltools"),
    "executorch": ("smolship.targets.executorch.target", "ExecuTorchTarget", "executorch", "executorch"),
    "gguf": ("smolship.targets.gguf.target", "GGUFTarget", "gguf", "llama_cpp"),
}
TARGET_NAMES = tuple(REGISTRY)


def get_target(name: str) -> Target:
    if name not in REGISTRY:
        raise SmolshipError(f"Unknown target '{name}'.", f"Choose one of: {', '.join(TARGET_NAMES)} (or 'all').")
    module, cls, extra, runtime = REGISTRY[name]
    try:
        importlib.import_module(runtime)
    except ImportError as e:
        raise MissingDependencyError(runtime, extra, e) from None
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("smolship.targets"):
            raise SmolshipError(f"The '{name}' target is not part of this smolship build yet.",
                                f"Use one of the available targets: {', '.join(available_targets())}.") from None
        raise
    return getattr(mod, cls)()


def available_targets() -> list[str]:
    out = []
    for name, (module, *_rest) in REGISTRY.items():
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def resolve_recipe(target: Target, quant: str | None) -> list[Recipe]:
    if quant is None:
        return [target.recipes[r] for r in target.default_recipes]
    if quant not in target.recipes:
        raise SmolshipError(
            f"The {target.name} target has no recipe '{quant}'.",
            f"Choose one of: {', '.join(target.recipes)}.",
        )
    return [target.recipes[quant]]


__all__ = ["REGISTRY", "TARGET_NAMES", "ExportOptions", "ExportResult", "Precision", "Recipe", "Target",
           "get_target", "available_targets", "resolve_recipe"]
