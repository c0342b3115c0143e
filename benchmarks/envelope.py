"""One result format for every benchmark script (llama-bench's lesson: rows that compare across time).

Every JSON under bench-results/ is an envelope: which script, the git commit (and whether the tree was
dirty), when, the machine (cores, load while it ran, library versions), the settings, and the rows.
One file per script and setting; history is git's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

SCHEMA = "smolship-bench/1"
ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def machine() -> dict:
    from smolship.validation.report import machine_info

    info = machine_info()
    info["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]  # a loaded machine makes tok/s noisy
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def envelope(script: str, settings: dict, rows, **extra) -> dict:
    """The result of one benchmark run; `rows` is a list of dicts (or a dict of named rows)."""
    return {"schema": SCHEMA, "script": script, **git_commit(),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": machine(), "settings": settings, "rows": rows, **extra}


def write(path: Path, result: dict) -> None:
    """Written whole or not at all (a killed run keeps the previous file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)



def merged_rows(path: Path, rows: list, key) -> list:
    """The file's rows with this run's laid over them: rows with the same key(row) replaced, the others kept
    (a sweep run in parts, or cut short, keeps what every part measured)."""
    path = Path(path)
    new = {key(r) for r in rows}
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    return [r for r in old if key(r) not in new] + rows
