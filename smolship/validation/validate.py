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
from smolship.validation.long_context import LongReference, measure_long_context
from smolship.validation.parity import ParitySettings, ReferenceCache, measure_parity
from smolship.validation.platforms import APP_RUNTIMES, PLATFORM_EVAL_TOKENS, app_platforms, measure_platforms

APP_PINNED_TARGETS = {rt.package for rt in APP_RUNTIMES}


@dataclass
class ValidationSettings:
    eval_file: Path | None = None
    eval_tokens: int | None = None  # None = the whole eval set
    parity: ParitySettings = field(default_factory=ParitySettings)
    latency: LatencySettings = field(default_factory=LatencySettings)
    measure_latency: bool = True
    # parity over a whole context and peak RSS with the cache full (issue 29): opt-in, ~20 s a bundle at 2,048
    long_context: bool = False


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
        self._platform_docs: dict[int, list] = {}
        self.long_reference = LongReference(source) if settings.long_context else None

    def validate(self, bundle: Path, manifest: dict | None = None, progress=None) -> dict:
        manifest = manifest or read_manifest(bundle)
        target = get_target(manifest["target"])
        can_run, why = target.can_run()
        result: dict = {"runtime_ran": can_run, "runtime_note": why, "size_mb": manifest.get("size_mb")}
        if can_run:
            runner = target.load_runner(bundle, manifest)
            try:
                result.update(measure_parity(runner, self.reference, self.docs, self.settings.parity, progress))
                if self.long_reference is not None:
                    result["long_context"] = measure_long_context(
                        runner, self.long_reference, self.source.tokenizer, self.settings.parity.prefill_len,
                        self.settings.eval_file, progress)
            finally:
                runner.close()
            if self.settings.measure_latency:
                result.update(latency_in_worker(bundle, self.latency_settings()))
        elif self.long_reference is not None:
            result["long_context"] = {"note": f"not measured: {why}"}
        if can_run and manifest["target"] in APP_PINNED_TARGETS:  # the runtime versions the apps ship
            result["platforms"] = self.platform_rows(bundle, manifest, app_platforms_or_note(manifest["target"]), progress)
        weight = weight_parity(target, bundle, manifest, self.source, self.reference, self.docs, self.settings.parity)
        if weight is not None:
            result["weight_parity"] = weight
            if not can_run:  # the best available evidence fills the headline metrics, flagged as such
                result.update({k: weight[k] for k in ("kld_mean", "top1_agreement", "max_abs_logit_diff") if k in weight})
        return result

    def latency_settings(self) -> LatencySettings:
        """The latency settings, with the full-context memory measurement when long context is on."""
        from dataclasses import replace

        return replace(self.settings.latency, full_context=True) if self.settings.long_context else self.settings.latency

    def platform_docs(self, tokens: int = PLATFORM_EVAL_TOKENS) -> list:
        if tokens not in self._platform_docs:
            self._platform_docs[tokens] = load_eval(self.source.tokenizer, self.settings.eval_file, tokens)
        return self._platform_docs[tokens]

    def platform_rows(self, bundle: Path, manifest: dict, platforms: list, progress=None,
                      tokens: int = PLATFORM_EVAL_TOKENS) -> list[dict]:
        """Parity natively and on each platform (an app's runtime version, arm64 under qemu) over the eval
        set's first `tokens` tokens; a platform that could not be set up is a row with its reason."""
        ready = [p for p in platforms if not isinstance(p, dict)]
        runner = get_target(manifest["target"]).load_runner(bundle, manifest)
        try:
            rows = measure_platforms(bundle, manifest, runner, self.reference, self.platform_docs(tokens), ready, progress)
        finally:
            runner.close()
        return rows + [p for p in platforms if isinstance(p, dict)]


def app_platforms_or_note(target: str) -> list:
    """The apps' runtime versions as platforms; one that cannot be installed is a row saying why."""
    try:
        return app_platforms(target)
    except SmolshipError as e:
        return [{"platform": "apps' runtime", "error": e.problem, "fix": e.fix}]


def save_validation(bundle: Path, manifest: dict, result: dict) -> None:
    manifest["validation"] = result
    (Path(bundle) / MANIFEST).write_text(json.dumps(manifest, indent=2))


def save_latency(bundle: Path, manifest: dict, latency: dict) -> None:
    """Add latency measured after the export (export_matrix.measure_latency_after) to a published bundle:
    the manifest's validation, the model card, then the files' sha256 again."""
    from smolship import chat_format, model_card
    from smolship.bundle import write_manifest

    manifest["validation"] = {**(manifest.get("validation") or {}), **latency}
    fmt = chat_format.read(bundle) if (Path(bundle) / chat_format.FILE).is_file() else None
    model_card.write(bundle, manifest, fmt)
    write_manifest(bundle, manifest)


def save_platform_rows(bundle: Path, manifest: dict, rows: list[dict]) -> None:
    """Merge platform rows into the manifest (a platform measured again replaces its row), rewrite the
    model card from it and re-list the files' sha256."""
    from smolship import chat_format, model_card
    from smolship.bundle import write_manifest

    validation = manifest.setdefault("validation", {}) or {}
    kept = {r["platform"]: r for r in validation.get("platforms", [])}
    kept.update({r["platform"]: r for r in rows})
    native = kept.pop("native", None)
    validation["platforms"] = ([native] if native else []) + list(kept.values())
    manifest["validation"] = validation
    fmt = chat_format.read(bundle) if (Path(bundle) / chat_format.FILE).is_file() else None
    model_card.write(bundle, manifest, fmt)
    write_manifest(bundle, manifest)
