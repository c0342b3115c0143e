"""Validate a bundle: open its Runner in the real runtime, measure parity and latency, record both.

Where the runtime cannot run on this machine (Core ML off macOS), `weight_parity` over the
target's `stored_weights` (weights read back from the artifact, run through the reference graph) is reported instead and the
result says plainly that the runtime did not run and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from smolship.bundle import MANIFEST, read_manifest
from smolship.errors import SmolshipError
from smolship.exporter.sources import SourceModel, load_model
from smolship.runner import ReferenceRunner, Runner
from smolship.targets import get_target
from smolship.validation.weight_parity import weight_parity
from smolship.evalset import load_eval
from smolship.validation.latency import LatencySettings, latency_in_worker
from smolship.validation.parity import ParitySettings, ReferenceCache, measure_parity


@dataclass
class ValidationSettings:
    eval_file: Path | None = None
    eval_tokens: int | None = None  # None = the whole eval set
    parity: ParitySettings = field(default_factory=ParitySettings)
    latency: LatencySettings = field(default_factory=LatencySettings)
    measure_latency: bool = True


def open_runner(what: str | Path, threads: int | None = None) -> tuple[Runner, int]:
    """A bundle folder, or 'reference:<model spec>' -> (runner, vocab size)."""
    text = str(what)
    if text.startswith("reference:"):
        spec = text.removeprefix("reference:") or None
        source = load_model(spec)
        return ReferenceRunner.from_source(source, threads=threads), source.config.vocab_size
    manifest = read_manifest(Path(text))
    target = get_target(manifest["target"])
    return target.load_runner(Path(text), manifest, threads=threads), manifest["config"]["vocab_size"]


def source_for(manifest: dict, model: str | None = None) -> SourceModel:
    """Load the model the bundle was exported from (checked by sha256), or `model` if given."""
    src = manifest["source"]
    if model is None and src.get("kind") == "random":
        return load_model(src["ref"])
    try:
        source = load_model(model or src["ref"])
    except SmolshipError as e:
        raise SmolshipError(f"The bundle's source model could not be loaded: {e.problem}",
                            "Pass the source model with --model PATH.") from None
    if model is None and src.get("sha256") and source.source.get("sha256") != src["sha256"]:
        raise SmolshipError(f"The source model at '{src['ref']}' is not the file this bundle was exported from (sha256 differs).",
                            "Pass the original source with --model PATH.")
    return source


class Validator:
    """Holds the reference (and its cached outputs) so several bundles of one source share it."""

    def __init__(self, source: SourceModel, settings: ValidationSettings = ValidationSettings()):
        self.source, self.settings = source, settings
        self.docs = load_eval(source.tokenizer, settings.eval_file, settings.eval_tokens)
        longest = max(len(d.ids) for d in self.docs) + settings.parity.greedy_tokens + 8
        self.reference = ReferenceCache(ReferenceRunner.from_source(source, max_seq_len=max(longest, 512)))

    def validate(self, bundle: Path, manifest: dict | None = None, progress=None) -> dict:
        manifest = manifest or read_manifest(bundle)
        target = get_target(manifest["target"])
        can_run, why = target.can_run()
        result: dict = {"runtime_ran": can_run, "runtime_note": why, "size_mb": manifest.get("size_mb")}
        if can_run:
            runner = target.load_runner(bundle, manifest)
            try:
                result.update(measure_parity(runner, self.reference, self.docs, self.settings.parity, progress))
            finally:
                runner.close()
            if self.settings.measure_latency:
                result.update(latency_in_worker(bundle, self.settings.latency))
        weight = weight_parity(target, bundle, manifest, self.source)
        if weight is not None:
            result["weight_parity"] = weight
            if not can_run:  # the best available evidence fills the headline metrics, flagged as such
                result.update({k: weight[k] for k in ("kld_mean", "top1_agreement", "max_abs_logit_diff") if k in weight})
        return result


def save_validation(bundle: Path, manifest: dict, result: dict) -> None:
    manifest["validation"] = result
    (Path(bundle) / MANIFEST).write_text(json.dumps(manifest, indent=2))
