"""Every benchmark writes one result format: the envelope with the commit that produced it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "envelope.py")


def test_envelope_names_the_commit_machine_and_settings(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from envelope import SCHEMA, envelope, write
    finally:
        sys.path.pop(0)
    result = envelope("demo", {"threads": [1, 2]}, [{"case": "a", "kld_mean": 0.1}])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert result["schema"] == SCHEMA and result["commit"] == head and isinstance(result["dirty"], bool)
    assert result["machine"]["cpu_count"] and "torch" in result["machine"]["libraries"]
    assert len(result["machine"]["load_avg_1_5_15"]) == 3 and result["settings"] == {"threads": [1, 2]}
    write(tmp_path / "r.json", result)
    assert (tmp_path / "r.json").read_text().startswith("{") and not list(tmp_path.glob("*.tmp"))


def test_every_script_writes_its_results_through_the_envelope():
    """A script that dumps its own JSON shape (no commit, no machine) is what issue 16 found 7 of."""
    offenders = []
    for path in SCRIPTS:
        tree = ast.parse(path.read_text())
        calls = {getattr(n.func, "id", None) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        if not {"envelope", "write"} <= calls:
            offenders.append(path.name)
    assert not offenders, f"benchmarks not using envelope()/write(): {offenders}"
