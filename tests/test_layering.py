"""Imports run one way (issue 16): sources and quantization know nothing of targets, targets nothing of
validation or the CLI, and validation reaches targets only through the registry (Runners, stored weights)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "smolship"

# folder (or module) -> import prefixes it must not use
FORBIDDEN = {
    "exporter": ("smolship.targets", "smolship.validation", "smolship.cli", "smolship.matrix", "smolship.export"),
    "quant": ("smolship.targets", "smolship.validation", "smolship.cli", "smolship.exporter", "smolship.matrix"),
    "targets": ("smolship.validation", "smolship.cli", "smolship.matrix", "smolship.export_matrix"),
    "validation": ("smolship.targets.onnx", "smolship.targets.coreml", "smolship.targets.executorch",
                   "smolship.targets.gguf", "smolship.cli", "smolship.matrix"),
    "evalset.py": ("smolship.validation", "smolship.targets", "smolship.exporter"),
}


def imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_imports_run_one_way(part):
    files = [PKG / part] if part.endswith(".py") else sorted((PKG / part).rglob("*.py"))
    assert files
    bad = [f"{f.relative_to(PKG)} imports {name}" for f in files for name in imports_of(f)
           if any(name == p or name.startswith(p + ".") for p in FORBIDDEN[part])]
    assert not bad, "\n".join(bad)
