"""Every benchmark writes one result format, and every file in bench-results/ is in it.

The format (benchmarks/common.py): a JSON object whose first key is the commit it ran at, naming its script
(and variant), the machine and settings, with `rows` always a list of dicts; the file is
bench-results/SCRIPT.json or bench-results/SCRIPT-VARIANT.json.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name not in ("__init__.py", "common.py"))
RESULTS = sorted((ROOT / "bench-results").glob("*.json"))


@pytest.fixture(scope="module")
def common():
    sys.path.insert(0, str(ROOT))
    try:
        import benchmarks.common as c
    finally:
        sys.path.remove(str(ROOT))
    return c


def test_envelope_starts_with_the_commit_and_names_machine_and_settings(common, tmp_path):
    result = common.envelope("demo", {"threads": [1, 2]}, [{"case": "a", "kld_mean": 0.1}], "offgrid")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert list(result)[:2] == ["commit", "dirty"] and result["commit"] == head and isinstance(result["dirty"], bool)
    assert result["schema"] == common.SCHEMA and result["script"] == "demo" and result["variant"] == "offgrid"
    assert result["machine"]["cpu_count"] and "torch" in result["machine"]["libraries"]
    assert len(result["machine"]["load_avg_1_5_15"]) == 3 and result["settings"] == {"threads": [1, 2]}
    assert result["command"].startswith("python -m benchmarks.demo")
    path = common.result_path("demo", "offgrid")
    assert path == ROOT / "bench-results" / "demo-offgrid.json" and common.result_path("demo").name == "demo.json"
    common.write(tmp_path / path.name, result)
    back = json.loads((tmp_path / path.name).read_text())
    assert common.layout_problems(back, path.name) == [] and not list(tmp_path.glob("*.tmp"))


def test_the_layout_check_fails_where_the_format_is_broken(common):
    """The check the results files go through below, shown failing on each way out of the format."""
    good = common.envelope("demo", {}, [{"a": 1}])
    assert common.layout_problems(good, "demo.json") == []
    with pytest.raises(ValueError, match="rows is a dict"):
        common.envelope("demo", {}, {"ours": {"a": 1}})
    broken = {
        "rows": {**good, "rows": {"ours": {"a": 1}}},
        "row is not a dict": {**good, "rows": [1, 2]},
        "first key": {"schema": good["schema"], **good},
        "full git hash": {**good, "commit": None},
        "named": good,  # under another file name
        "migrated": {**good, "migrated": "wrapped unchanged"},
        "schema": {**good, "schema": "smolship-bench/1"},
        "lower-case": {**good, "variant": "Off Grid"},
    }
    for needle, result in broken.items():
        problems = common.layout_problems(result, "demo_offgrid.json" if needle == "named" else "demo.json")
        assert any(needle in p for p in problems), (needle, problems)
    assert "named demo.json, but its script and variant name it demo-x.json" in common.layout_problems(
        {**good, "variant": "x"}, "demo.json")


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_every_results_file_is_in_the_one_format(common, path):
    result = json.loads(path.read_text())
    assert common.layout_problems(result, path.name) == []
    assert (ROOT / "benchmarks" / f"{result['script']}.py").is_file(), f"{path.name}: no script re-creates it"
    listed = (ROOT / "bench-results" / "README.md").read_text()
    assert f"`{path.name}`" in listed, f"{path.name} is not listed in bench-results/README.md"


def test_bench_results_holds_results_and_their_readme_only():
    others = sorted(p.name for p in (ROOT / "bench-results").iterdir()
                    if p.is_file() and p.suffix != ".json" and p.name not in ("README.md", "demo_report.md"))
    assert not others, f"not results in the one format: {others}"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_every_script_is_a_module_that_writes_through_the_envelope(path):
    """A script that dumps its own JSON shape (no commit, no machine) is what issue 16 found 7 of; one that
    edits sys.path or imports `envelope` runs only as a file, not as `python -m benchmarks.NAME`."""
    tree = ast.parse(path.read_text())
    calls = {getattr(n.func, "id", getattr(n.func, "attr", None)) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert {"envelope", "write", "add_output_args", "output_path"} <= calls, f"{path.name}: {calls}"
    imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "benchmarks.common" in imports and not imports & {"envelope", "onnx_anchor", "executorch_anchor",
                                                             "offgrid_screen"}, imports
    assert "sys.path.insert(0, str(Path(__file__)" not in path.read_text()
    assert "script_name(__file__)" in path.read_text(), "results carry the script's own name"
    assert f"python -m benchmarks.{path.stem}" in (ast.get_docstring(tree) or ""), "the docstring shows how to run it"
