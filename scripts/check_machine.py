"""Fail fast, in one line each, where this machine cannot set up or run smolship.

Run by `make setup` (and so `make demo` / `make test`) before anything is installed, with whatever
Python the Makefile found: keep it to the standard library and to syntax old Pythons still parse.
Exit 0 when the machine can work, 1 otherwise (every problem printed, each with its fix).
"""

import os
import platform
import shutil
import subprocess
import sys

NEEDED_PYTHON = (3, 11)
# Measured on a fresh clone (Dec 2026): .venv 2.3 GB (+ browser test packages), pip's build scratch under
# TMPDIR ~1 GB while llama.cpp compiles; `make demo`'s out/ is measured in the README.
SETUP_GB = 5.0
DEMO_GB = 3.0


def python_problem(python):
    try:
        version = subprocess.run([python, "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        return "Python '%s' cannot be run (%s)." % (python, err), "Install Python 3.11 and run `make PYTHON=python3.11 ...`."
    found = version.stdout.strip()
    if version.returncode != 0:
        if "ensurepip" in version.stderr or "venv" in version.stderr:
            return ("Python '%s' has no venv/ensurepip module, so .venv cannot be created." % python,
                    "Install it (Debian/Ubuntu: `sudo apt install python3.11-venv`).")
        return "Python '%s' failed to start: %s" % (python, version.stderr.strip()[-200:]), "Install Python 3.11."
    if found != "%d.%d" % NEEDED_PYTHON:
        return ("Python '%s' is %s; smolship needs exactly 3.11 (executorch 1.5.1 and the pinned torch 2.13.0 build are cp311)." % (python, found),
                "Install Python 3.11 (pyenv, deadsnakes, or your OS package) and run `make PYTHON=python3.11 ...`.")
    return None


def compiler_problems():
    problems = []
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        problems.append(("No C compiler found (cc/gcc/clang); pip compiles llama.cpp for llama-cpp-python.",
                         "Install one: Debian/Ubuntu `sudo apt install build-essential cmake`, macOS `xcode-select --install`."))
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        problems.append(("No C++ compiler found (c++/g++/clang++); pip compiles llama.cpp for llama-cpp-python.",
                         "Install one: Debian/Ubuntu `sudo apt install build-essential cmake`, macOS `xcode-select --install`."))
    if not shutil.which("cmake"):
        problems.append(("cmake is not on PATH; llama-cpp-python's build needs cmake >= 3.21.",
                         "Install it: Debian/Ubuntu `sudo apt install cmake`, macOS `brew install cmake`."))
    return problems


def disk_problem(folder, needed_gb, what):
    free_gb = shutil.disk_usage(folder).free / 1e9
    if free_gb < needed_gb:
        return ("Only %.1f GB free at '%s'; %s needs about %.0f GB." % (free_gb, os.path.abspath(folder), what, needed_gb),
                "Free some disk space, or clone the project onto a larger disk.")
    return None


def platform_warning():
    system, machine = platform.system(), platform.machine().lower()
    if (system, machine) in (("Linux", "x86_64"), ("Darwin", "arm64")):
        return None
    return "Warning: %s/%s is untested (Linux x86_64 is tested; macOS arm64 should work)." % (system, machine)


def main(argv):
    stage = argv[1] if len(argv) > 1 else "setup"
    python = argv[2] if len(argv) > 2 else sys.executable
    problems = []
    if stage == "setup":
        problems += [p for p in [python_problem(python)] if p]
        problems += compiler_problems()
        problems += [p for p in [disk_problem(".", SETUP_GB, "setup (.venv with torch, executorch, coremltools, onnxruntime)")] if p]
    elif stage == "demo":
        problems += [p for p in [disk_problem(".", DEMO_GB, "the demo (four bundles and their reports in out/)")] if p]
    warning = platform_warning()
    if warning:
        print(warning, file=sys.stderr)
    for problem, fix in problems:
        print("smolship cannot %s on this machine: %s\n  Fix: %s" % (stage, problem, fix), file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
