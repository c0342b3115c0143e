"""Serve one bundle's Runner over a pipe, from another Python: another runtime version, or arm64 under qemu.

A phone runs the arm64 build of a bundle's runtime, and an app may pin another runtime version than the
exporter's. To measure those, the bundle's own Runner (the same code as on x86: its real KV-cache loop)
runs in a second interpreter, `python -m smolship.validation.runtime_host BUNDLE`, and the parity loop
in the main process drives it through `validation.hosted.HostedRunner`. This module needs only numpy and
the runtime itself (no torch for ONNX Runtime and llama.cpp), so it loads in a bare emulated arm64 Python.

Protocol: length-prefixed pickles both ways. The host first sends a hello (arch, CPU features, runtime
versions, max_seq_len); then answers (op, arg) requests with ("ok", value) or ("error", (problem, fix)).
Anything the runtime prints goes to stderr: stdout carries only the protocol.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import pickle
import platform
import struct
import sys
from pathlib import Path
from typing import BinaryIO

# The runner module of each target that can run off the exporter's machine (Core ML runs only on macOS).
RUNNER_MODULES = {
    "executorch": "smolship.targets.executorch.runner",
    "onnx": "smolship.targets.onnx.runner",
    "gguf": "smolship.targets.gguf.runner",
}
# The Python distributions whose versions say which runtime build ran.
RUNTIME_PACKAGES = {
    "executorch": ("executorch", "torch"),
    "onnx": ("onnxruntime",),
    "gguf": ("llama_cpp_python",),
}
# Linux arm64 hwcap bits (arch/arm64/include/uapi/asm/hwcap.h) that select kernels in XNNPACK / KleidiAI,
# MLAS and ggml: fp16 arithmetic, dot product, SVE, int8 matrix multiply, bf16, SME.
ARM64_HWCAP = {"asimdhp": 10, "asimddp": 20, "sve": 22, "asimdfhm": 23}
ARM64_HWCAP2 = {"sve2": 1, "svei8mm": 9, "i8mm": 13, "bf16": 14, "sme": 23}
AT_HWCAP, AT_HWCAP2 = 16, 26
# x86 flags that select kernels in the same libraries.
X86_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_features() -> list[str]:
    """The kernel-selecting CPU features this process sees (under qemu: the emulated CPU's hwcaps)."""
    if platform.machine() in ("aarch64", "arm64"):
        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        hw, hw2 = getauxval(AT_HWCAP), getauxval(AT_HWCAP2)
        return sorted([n for n, b in ARM64_HWCAP.items() if hw >> b & 1] +
                      [n for n, b in ARM64_HWCAP2.items() if hw2 >> b & 1])
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    have = set(flags.split(":", 1)[1].split())
    return [f for f in X86_FLAGS if f in have]


def runtime_versions(target: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in RUNTIME_PACKAGES[target]:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def send(out: BinaryIO, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(struct.pack("<Q", len(data)) + data)
    out.flush()


def recv(inp: BinaryIO):
    head = inp.read(8)
    if len(head) < 8:
        return None  # the other side closed the pipe
    (n,) = struct.unpack("<Q", head)
    return pickle.loads(inp.read(n))


def open_runner(bundle: Path, threads: int | None):
    manifest = json.loads((bundle / "manifest.json").read_text())
    target = manifest["target"]
    if target not in RUNNER_MODULES:
        raise ValueError(f"no runtime host for target '{target}'")
    runner = importlib.import_module(RUNNER_MODULES[target]).open_bundle(bundle, manifest, threads)
    return runner, target


def serve(runner, inp: BinaryIO, out: BinaryIO) -> None:
    from smolship.errors import SmolshipError

    ops = {"prefill": runner.prefill, "decode": runner.decode, "reset": lambda _: runner.reset()}
    while (msg := recv(inp)) is not None:
        op, arg = msg
        if op == "close":
            break
        try:
            send(out, ("ok", ops[op](arg)))
        except SmolshipError as e:
            send(out, ("error", (e.problem, e.fix)))
        except Exception as e:  # the runtime's own failure, reported to the caller as text
            send(out, ("error", (f"{type(e).__name__}: {e}", "")))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    out = os.fdopen(os.dup(1), "wb")  # the protocol's channel
    os.dup2(2, 1)  # runtime chatter (C++ logs, prints) goes to stderr
    inp = sys.stdin.buffer
    try:
        runner, target = open_runner(a.bundle, a.threads)
    except Exception as e:
        problem, fix = (e.problem, e.fix) if hasattr(e, "problem") else (f"{type(e).__name__}: {e}", "")
        send(out, ("error", (problem, fix)))
        return
    send(out, ("ok", {"arch": platform.machine(), "python": platform.python_version(), "target": target,
                      "cpu_features": cpu_features(), "versions": runtime_versions(target),
                      "name": runner.name, "max_seq_len": runner.max_seq_len}))
    try:
        serve(runner, inp, out)
    finally:
        runner.close()


if __name__ == "__main__":
    main()
