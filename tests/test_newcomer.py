"""The newcomer's path: the Makefile's environment, the machine check, and output kept for a person."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def make_variables(*args: str, env: dict | None = None) -> dict[str, str]:
    """Make's final variable database (no recipe runs), as a dict of plain `NAME := value` lines."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(["make", "-pn", "setup", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    return dict(re.findall(r"^([A-Z_]+) :?= (.*)$", proc.stdout, flags=re.M))


@pytest.mark.parametrize("args, env, expected", [([], {}, None), (["CMAKE_BUILD_PARALLEL_LEVEL=3 "], {}, "3"),
                                               ([], {"CMAKE_BUILD_PARALLEL_LEVEL": "2   "}, "2")])
def test_cmake_parallel_level_is_a_bare_number(args, env, expected):
    """cmake refuses '2   ' (a trailing comment's spaces kept by Make): the value must be digits only."""
    value = make_variables(*args, env=env)["CMAKE_BUILD_PARALLEL_LEVEL"]
    assert re.fullmatch(r"\d+", value), repr(value)
    assert expected is None or value == expected


def run_check(stage: str, env_path: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "check_machine.py"), stage, python],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PATH": env_path})


def test_machine_check_passes_here_and_names_missing_tools(tmp_path):
    ok = run_check("setup", os.environ["PATH"])
    assert ok.returncode == 0, ok.stderr
    # a PATH with only this Python on it: no compiler, no cmake
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3.11").symlink_to(sys.executable)
    bare = run_check("setup", str(tmp_path / "bin"), str(tmp_path / "bin" / "python3.11"))
    assert bare.returncode == 1
    lines = bare.stderr.splitlines()
    assert any("No C compiler" in line for line in lines) and any("cmake is not on PATH" in line for line in lines)
    assert all("Traceback" not in line for line in lines)
    assert sum(line.strip().startswith("Fix:") for line in lines) == 3  # one fix per problem


def test_machine_check_refuses_another_python(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 3.12\n")  # answers like a Python 3.12 would to the version probe
    fake.chmod(0o755)
    proc = run_check("setup", os.environ["PATH"], str(fake))
    assert proc.returncode == 1 and "is 3.12; smolship needs exactly 3.11" in proc.stderr


def test_library_output_goes_to_the_log_and_the_display_to_the_terminal(tmp_path):
    """What C libraries and tqdm write to fd 1/2 lands in the log; smolship's own lines do not."""
    script = f"""
import os, sys
from pathlib import Path
from smolship.logs import library_output_to
with library_output_to(Path({str(tmp_path / 'x.log')!r})) as terminal:
    os.write(2, b"raw fd 2 chatter\\n")
    os.write(1, b"raw fd 1 chatter\\n")
    print("python stderr chatter", file=sys.stderr)
    terminal.write("smolship display line\\n")
    from rich.console import Console
    from smolship.logs import progress_bar
    with progress_bar(on=Console(file=terminal, force_terminal=True), label="b") as progress:
        progress("converting", 0.5)
        print("tqdm under the bar", file=sys.stderr)  # what coremltools' tqdm does while the bar is up
        print("print under the bar")
print("after: stdout is back")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "SMOLSHIP_DEBUG"})
    log = (tmp_path / "x.log").read_text()
    assert proc.returncode == 0, proc.stderr
    assert "raw fd 2 chatter" in log and "raw fd 1 chatter" in log and "python stderr chatter" in log
    assert "tqdm under the bar" in log and "print under the bar" in log
    assert "smolship display line" not in log and "smolship display line" in proc.stderr
    assert "chatter" not in proc.stderr + proc.stdout and "after: stdout is back" in proc.stdout
    assert "under the bar" not in proc.stderr + proc.stdout
