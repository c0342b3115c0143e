"""The export chain for one (target, recipe): lower -> package -> validate -> atomic rename.

No bundle appears under --out unless every step succeeded, and every bundle's manifest carries its
measured parity and latency.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from smolship import cache, chat_format, model_card
from smolship.bundle import atomic_bundle, new_manifest, write_manifest
from smolship.exporter.sources import SourceModel
from smolship.stage_clock import StageClock
from smolship.targets import ExportOptions, Recipe, get_target
from smolship.targets.base import no_progress
from smolship.targets.knobs import parse as parse_knobs
from smolship.validation.validate import Validator, save_validation


def bundle_name(target: str, recipe: str) -> str:
    return f"{target}-{recipe}"


def export_bundle(source: SourceModel, target_name: str, recipe: Recipe, out: Path,
                  options: ExportOptions | None = None, validator: Validator | None = None,
                  force: bool = False, progress=no_progress) -> tuple[Path, dict]:
    """Export, package and (unless validator is None) validate one bundle; returns (path, manifest)."""
    options = options or ExportOptions()
    target = get_target(target_name)
    parse_knobs(target.knobs, options.extra, target_name)  # unknown or ill-typed extra keys fail before any work
    final = Path(out) / bundle_name(target_name, recipe.name)
    reused = cache.usage()
    with atomic_bundle(final, force=force) as tmp:
        t0 = time.perf_counter()
        progress = clock = StageClock(progress)
        result = target.export(source, recipe, tmp, options, progress)
        export_seconds = round(time.perf_counter() - t0, 1)
        clock.enter("packaging")
        source.tokenizer.save(tmp)
        (tmp / "generation_config.json").write_text(json.dumps(source.tokenizer.generation_config(), indent=2))
        manifest = new_manifest(source, target_name, recipe, target.runtime_versions(), result.files,
                                result.info, options.max_seq_len)
        if options.extra:  # the user's target options (--set): a bundle says how it was made
            manifest["quant"]["options"] = dict(options.extra)
        manifest["export_seconds"] = export_seconds  # the target's own work, without validation
        write_manifest(tmp, manifest)
        if validator is not None:
            progress("validating", 0.0)
            save_validation(tmp, manifest, validator.validate(tmp, manifest, progress))
        # what came from the results cache (reference logits, calibration statistics), for the summary line
        manifest["cache"] = cache.usage_since(reused)
        clock.enter("model card")
        # for apps: the prompt strings and a model card with the measured figures (then re-list the files)
        model_card.write(tmp, manifest, chat_format.add_to_bundle(tmp, manifest, source.tokenizer))
        # where this bundle's time went, per step of its target and of its validation (issue 26)
        manifest["stage_seconds"] = clock.seconds()
        write_manifest(tmp, manifest)
    return final, manifest
