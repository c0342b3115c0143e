"""A Runner whose runtime lives in another Python process: `runtime_host` speaking over a pipe.

The parity loop cannot tell it from an in-process runner, so an arm64 build under qemu, or an app's
pinned runtime version, is measured by exactly the code that measures the exporter's own runtime.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from smolship.errors import SmolshipError
from smolship.runner import Runner
from smolship.validation.runtime_host import recv, send


class HostedRunner(Runner):
    """`argv` is a Python command (e.g. [qemu-aarch64-static, -L, root, root/usr/bin/python3.11]); `env` its
    environment. `info` holds the host's hello: arch, cpu_features, runtime versions."""

    def __init__(self, bundle: Path, argv: Sequence[str], env: dict[str, str], label: str,
                 threads: int | None = None):
        self.label = label
        self._log = tempfile.TemporaryFile()
        cmd = [*argv, "-m", "smolship.validation.runtime_host", str(Path(bundle).resolve())]
        if threads:
            cmd += ["--threads", str(threads)]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env)
        except OSError as e:
            raise SmolshipError(f"Could not start the {label} runtime ({e}).",
                                "Set it up again (`make setup`, and `make setup-arm64` for arm64).") from None
        self.info = self._call(None)
        self.name = f"{self.info['name']} [{label}]"
        self.max_seq_len = int(self.info["max_seq_len"])

    def _call(self, request):
        try:
            if request is not None:
                send(self.proc.stdin, request)
            reply = recv(self.proc.stdout)
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None:
            raise SmolshipError(f"The {self.label} runtime process ended unexpectedly: {self._log_tail()}",
                                "Run it again with SMOLSHIP_DEBUG=1; re-create the environment if a library is missing.")
        status, value = reply
        if status == "error":
            problem, fix = value
            raise SmolshipError(f"{self.label}: {problem}", fix or "See the runtime's message above.")
        return value

    def _log_tail(self, lines: int = 8) -> str:
        self._log.seek(0)
        text = self._log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or f"exit code {self.proc.poll()}"

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        return self._call(("prefill", [int(i) for i in ids]))

    def decode(self, token: int) -> np.ndarray:
        return self._call(("decode", int(token)))

    def reset(self) -> None:
        self._call(("reset", None))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                send(self.proc.stdin, ("close", None))
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self._log.close()


def child_env(extra_path: Sequence[Path | str] = (), **overrides: str) -> dict[str, str]:
    """This process's environment with `extra_path` first on PYTHONPATH and the smolship package importable."""
    import smolship

    package_root = Path(smolship.__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_path), str(package_root)])
    env.update(overrides)
    return env
