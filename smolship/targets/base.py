"""What every target provides: recipes, export into a folder, a Runner over its real runtime.

Each target lives in its own package (targets/onnx, targets/coreml, targets/executorch, targets/gguf)
and registers one `Target` subclass in `targets/__init__.py`. The export pipeline (smolship/export.py)
does the rest the same way for all of them: tokenizer files, manifest, validation, atomic rename.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from smolship.runner import Runner
from smolship.targets.knobs import NoKnobs


class Precision(str, enum.Enum):
    """Precision class of a recipe: picks the default CI-gate thresholds."""

    FP32 = "32-bit"
    FP16 = "16-bit"
    INT8 = "8-bit"
    INT4 = "4-bit"


@dataclass(frozen=True)
class Recipe:
    name: str
    precision: Precision
    description: str


@dataclass
class ExportOptions:
    max_seq_len: int = 2048
    keep_embeddings_fp: bool = False  # keep token embedding / lm_head unquantized in low-bit recipes
    calibration_text: str | None = None  # for recipes that calibrate (imatrix, GPTQ...)
    extra: dict = field(default_factory=dict)  # target-specific knobs: the target's `knobs` dataclass says which


@dataclass
class ExportResult:
    files: list[str]  # model files written into the bundle folder (relative names)
    info: dict = field(default_factory=dict)  # target facts for manifest.json (graph ops, tensor types...)


# progress(description, fraction 0..1)
Progress = Callable[[str, float], None]


def no_progress(_desc: str, _frac: float) -> None:
    pass


class Target(ABC):
    name: ClassVar[str]
    extra: ClassVar[str]  # pip extra that installs the runtime: pip install 'smolship[extra]'
    recipes: ClassVar[dict[str, Recipe]]
    default_recipes: ClassVar[tuple[str, ...]]
    runtime_available_reason: ClassVar[str | None] = None  # e.g. "Core ML runs on macOS only"
    knobs: ClassVar[type] = NoKnobs  # dataclass of what ExportOptions.extra may hold (targets.knobs.parse)

    @abstractmethod
    def export(self, model, recipe: Recipe, out_dir: Path, options: ExportOptions,
               progress: Progress = no_progress) -> ExportResult:
        """Write the artifact for `model` (a SourceModel) into `out_dir` (already exists, empty)."""

    @abstractmethod
    def load_runner(self, bundle: Path, manifest: dict, threads: int | None = None) -> Runner:
        """A Runner over the bundle's artifact in the real runtime."""

    @abstractmethod
    def runtime_versions(self) -> dict[str, str]:
        """Versions of the libraries that produced / run the artifact."""

    def can_run(self) -> tuple[bool, str | None]:
        """Whether this machine can execute the artifact (Core ML: macOS only)."""
        return True, None

    def stored_weights(self, bundle: Path, manifest: dict, source):
        """The artifact's weights read back as Runners (`facts`, `weights_runner(seq)`, `graph_runner(seq)`), for
        parity without the runtime (Core ML off macOS: validation.weight_parity). None when not applicable."""
        return None
