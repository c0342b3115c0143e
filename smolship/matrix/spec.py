"""The release matrix as data: a small TOML spec (models x targets x recipes, eval and gate settings)
expanded into one job per (model, target), each with the CPUs and memory it asks a scheduler for.

    out = "release"                      # one folder every worker reaches (shared path)
    models = ["random:tiny", "ft/checkpoint-1200"]   # or [[models]] tables: source, name, memory_gb
    targets = ["gguf", "onnx"]
    max_kld = 0.05                       # optional parity budget, instead of [recipes]
    [recipes]                            # optional; default: each target's default recipes
    gguf = ["q8_0"]
    [eval]                               # tokens, file, latency, threads (= CPUs per job), runs
    [gate]                               # like [tool.smolship.gate]: max_kld, min_top1, "4-bit" = {...}
    [resources]                          # max_retries, memory_gb (overrides the estimate)

Memory is estimated from the model's config, without loading weights: peak RSS of export +
validation is ~2.5 fp32 copies of the weights plus the runtimes (`python -m benchmarks.scale`, last run retired with
its migrated results file, bench-results/README.md: 1.7B
peaks 14.5-17.3 GB for 4-/8-bit recipes, 20.2 GB for ONNX fp32; 360M 3.2-6.3 GB).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from smolship.errors import SmolshipError
from smolship.exporter.config import PRESETS, LlamaConfig

BASE_MB = 3000  # python + torch + one runtime + the eval reference, before the weights
FP32_COPIES = 2.5  # peak / fp32 weight bytes at 360M and 1.7B (scale.json)
SPEC_KEYS = {"out", "models", "targets", "recipes", "max_kld", "max_seq_len", "keep_embeddings_fp", "eval", "gate",
             "resources"}


@dataclass(frozen=True)
class ModelSpec:
    source: str  # anything load_model reads
    name: str  # output sub-folder: OUT/<name>/<target>-<recipe>
    memory_gb: float | None = None  # overrides the estimate


@dataclass(frozen=True)
class EvalSpec:
    tokens: int | None = 4096  # None = the whole eval set
    file: str | None = None
    latency: bool = True
    threads: int = 2  # runtime threads in validation, and the CPUs each job asks for
    runs: int = 3


@dataclass
class MatrixSpec:
    out: str
    models: list[ModelSpec]
    targets: list[str]
    recipes: dict[str, list[str]] = field(default_factory=dict)
    max_kld: float | None = None
    max_seq_len: int = 2048
    keep_embeddings_fp: bool = False
    eval: EvalSpec = field(default_factory=EvalSpec)
    gate: dict = field(default_factory=dict)
    max_retries: int = 2
    memory_gb: float | None = None


def model_name(source: str) -> str:
    """A folder name for a model: random:tiny -> random-tiny, org/repo -> repo, a/b/model.gguf -> model."""
    text = source.rstrip("/")
    if text.startswith("random:"):
        text = "random-" + text.removeprefix("random:")
    else:
        p = Path(text)
        text = p.stem if p.suffix in (".gguf", ".safetensors") else p.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text) or "model"


def _model(entry, where: str) -> ModelSpec:
    if isinstance(entry, str):
        return ModelSpec(entry, model_name(entry))
    if isinstance(entry, dict) and isinstance(entry.get("source"), str):
        unknown = set(entry) - {"source", "name", "memory_gb"}
        if unknown:
            raise SmolshipError(f"{where}: unknown model keys {sorted(unknown)}.", "Use source, name and memory_gb.")
        return ModelSpec(entry["source"], entry.get("name") or model_name(entry["source"]), entry.get("memory_gb"))
    raise SmolshipError(f"{where}: a model must be a string or a table with 'source', got {entry!r}.",
                        'Write models = ["random:tiny"] or [[models]] source = "..." name = "...".')


def parse_spec(data: dict, where: str = "spec") -> MatrixSpec:
    """Check a spec dict (TOML-loaded) and fill defaults; every error names the key and the fix."""
    from smolship.targets import TARGET_NAMES

    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise SmolshipError(f"{where}: unknown keys {sorted(unknown)}.", f"Use only: {', '.join(sorted(SPEC_KEYS))}.")
    models = [_model(m, where) for m in data.get("models") or []]
    if not models:
        raise SmolshipError(f"{where}: no models.", 'Add models = ["random:tiny", ...].')
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise SmolshipError(f"{where}: two models share the output name {sorted({n for n in names if names.count(n) > 1})}.",
                            "Give them distinct names: [[models]] source = \"...\" name = \"...\".")
    targets = data.get("targets") or list(TARGET_NAMES)
    targets = list(TARGET_NAMES) if targets == "all" else targets
    bad = [t for t in targets if t not in TARGET_NAMES]
    if bad:
        raise SmolshipError(f"{where}: unknown targets {bad}.", f"Choose from: {', '.join(TARGET_NAMES)}.")
    recipes = data.get("recipes") or {}
    if recipes and data.get("max_kld") is not None:
        raise SmolshipError(f"{where}: max_kld picks the recipe itself, so it cannot be combined with [recipes].",
                            "Drop one of them.")
    ev = data.get("eval") or {}
    unknown = set(ev) - {"tokens", "file", "latency", "threads", "runs"}
    if unknown:
        raise SmolshipError(f"{where}: unknown [eval] keys {sorted(unknown)}.", "Use tokens, file, latency, threads, runs.")
    res = data.get("resources") or {}
    return MatrixSpec(out=str(data.get("out", "release")), models=models, targets=list(targets),
                      recipes={k: list(v) for k, v in recipes.items()}, max_kld=data.get("max_kld"),
                      max_seq_len=int(data.get("max_seq_len", 2048)),
                      keep_embeddings_fp=bool(data.get("keep_embeddings_fp", False)),
                      eval=EvalSpec(**{"tokens": ev.get("tokens", 4096) or None, **{k: v for k, v in ev.items() if k != "tokens"}}),
                      gate=dict(data.get("gate") or {}), max_retries=int(res.get("max_retries", 2)),
                      memory_gb=res.get("memory_gb"))


def load_spec(path: Path) -> MatrixSpec:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SmolshipError(f"The matrix spec '{path}' does not exist.", "Pass the path of a .toml spec.") from None
    except tomllib.TOMLDecodeError as e:
        raise SmolshipError(f"{path} is not valid TOML ({e}).", "Fix the line named above.") from None
    spec = parse_spec(data, str(path))
    if "://" not in spec.out and not Path(spec.out).is_absolute():
        spec.out = str(path.parent / spec.out)  # relative to the spec, so the spec means the same from anywhere
    return spec


def model_config(source: str) -> LlamaConfig | None:
    """The model's config without loading weights (None when only a download would tell)."""
    if source.startswith("random:"):
        return PRESETS.get(source.removeprefix("random:"))
    from smolship.exporter.gguf_source import config_from_gguf, open_gguf
    from smolship.exporter.sources import default_model_path

    path = default_model_path() if source in ("", "default") else Path(source).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return LlamaConfig.from_hf(json.loads((path / "config.json").read_text()))
    if path.is_file() and path.suffix == ".gguf":
        return config_from_gguf(open_gguf(path))
    if path.is_file() and (path.parent / "config.json").is_file():
        return LlamaConfig.from_hf(json.loads((path.parent / "config.json").read_text()))
    return None


def estimate_memory_mb(config: LlamaConfig) -> int:
    """Peak RSS of one (model, target) job: export, validation reference and runtime side by side."""
    return int(BASE_MB + FP32_COPIES * config.n_params * 4 / 1e6)


def job_memory_mb(spec: MatrixSpec, model: ModelSpec) -> int:
    explicit = model.memory_gb if model.memory_gb is not None else spec.memory_gb
    if explicit is not None:
        return int(explicit * 1000)
    config = model_config(model.source)
    if config is None:
        raise SmolshipError(f"Cannot read the config of '{model.source}' without downloading it, so its memory is unknown.",
                            f'Give it in the spec: [[models]] source = "{model.source}" memory_gb = <peak GB>.')
    return estimate_memory_mb(config)
