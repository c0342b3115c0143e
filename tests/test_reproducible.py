"""Reproducible bundles: the same source, recipe and library versions give byte-identical files.

Every target's default recipes are exported twice from random:tiny and every bundle file is compared by
sha256, except the two that record the export itself: manifest.json and the README.md model card carry
its date and duration (and, when validated, measured latency), by design."""

from __future__ import annotations

import pytest

from smolship.export import export_bundle
from smolship.targets import ExportOptions, get_target

TARGETS = ["gguf", "onnx", "executorch", "coreml"]
# ExecuTorch lowering is the slowest step of the suite (~35 s per tiny export): CI checks its 4-bit
# default; 8da8w was byte-identical too when checked (issue 17's closing note).
RECIPES = {"executorch": ("8da4w",)}


EXPORT_RECORDS = {"README.md"}  # manifest.json is not in its own file table


def file_hashes(manifest: dict) -> dict[str, str]:
    return {rel: f["sha256"] for rel, f in manifest["files"].items() if rel not in EXPORT_RECORDS}


@pytest.mark.parametrize("target", TARGETS)
def test_export_twice_gives_identical_files(target, tiny_model, tmp_path):
    t = get_target(target)
    options = ExportOptions(max_seq_len=128)
    for recipe in RECIPES.get(target, t.default_recipes):
        first = export_bundle(tiny_model, target, t.recipes[recipe], tmp_path / "a", options)[1]
        if target == "coreml" and recipe == "fp16":
            type(t)._last = None  # convert again: the fp16 conversion is otherwise reused in one process
        second = export_bundle(tiny_model, target, t.recipes[recipe], tmp_path / "b", options)[1]
        a, b = file_hashes(first), file_hashes(second)
        assert a.keys() == b.keys()
        differ = sorted(rel for rel in a if a[rel] != b[rel])
        assert not differ, f"{target}-{recipe}: these files differ between two exports: {differ}"
        assert any(rel.split("/")[0] in first["model_files"] for rel in a)  # the model itself was compared
