"""Where else a bundle must hold: the runtime versions the apps pin, and the arm64 kernels phones run.

A `Platform` is a Python command that can host a bundle's Runner (`runtime_host`):
- `app_runtime("executorch", "1.5.0")`: this Python with that runtime's PyPI wheel first on its path,
  installed by setup under `<venv>/runtimes/` (its C++ runtime, kernels and XNNPACK are in the wheel);
- `arm64("cortex-a76")`: the aarch64 wheels of the same versions in an arm64 CPython under qemu user-mode
  (`scripts/arm64_env.py` builds it; its env.json says how to start it). Emulated time is never a speed.
`measure_platforms` runs the bundle natively and on each platform over the same eval tokens and
reports each one's parity against the reference, and its divergence from the native runtime.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smolship.errors import SmolshipError
from smolship.validation.hosted import HostedRunner, child_env
from smolship.validation.parity import ParitySettings, log_softmax, measure_parity


from smolship.validation.runtime_host import RUNNER_MODULES

HOSTED_TARGETS = frozenset(RUNNER_MODULES)


@dataclass(frozen=True)
class AppRuntime:
    """The runtime an example app links, and the source file that pins it (tests check the two agree)."""
    app: str
    package: str
    version: str
    pinned_in: str


# examples/android: org.pytorch:executorch-android (Maven); examples/ios: pytorch/executorch's SwiftPM
# branch swiftpm-1.5.0 (there is no 1.5.1 Swift package). Each is the same C++ runtime as the PyPI wheel
# of that version, which is how a bundle is proven in it here.
APP_RUNTIMES = (
    AppRuntime("android", "executorch", "1.5.1", "examples/android/gradle/libs.versions.toml"),
    AppRuntime("ios", "executorch", "1.5.0", "examples/ios/project.yml"),
)
# Parity on other platforms: the eval set's first tokens (emulation runs ~1 s a decode step), one greedy prompt.
PLATFORM_EVAL_TOKENS = 256
PLATFORM_PARITY = ParitySettings(greedy_prompts=1, greedy_tokens=16)
# An arm64 kld above this multiple of the native one is a finding (issue 25): the kernels differ, not just round.
DIVERGENCE_FACTOR = 1.5
DIVERGENCE_FLOOR = 1e-3  # below it both are float noise (fp32 bundles), and a ratio says nothing


@dataclass(frozen=True)
class Platform:
    label: str
    argv: tuple[str, ...]
    env: dict = field(hash=False, compare=False)
    arch: str = "x86_64"
    cpu: str | None = None
    note: str = ""
    unsupported: dict = field(default_factory=dict, hash=False, compare=False)  # target -> why it cannot run here

    def runner(self, bundle: Path, threads: int | None = None) -> HostedRunner:
        return HostedRunner(bundle, self.argv, self.env, self.label, threads)


def venv_dir() -> Path:
    return Path(sys.prefix)


def installed_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def runtime_dir(package: str, version: str) -> Path:
    return venv_dir() / "runtimes" / f"{package}-{version}"


def install_app_runtime(package: str, version: str, quiet: bool = True) -> Path:
    """The runtime's wheel alone (no dependencies: it links the torch installed here) in its own folder."""
    dest = runtime_dir(package, version)
    stamp = dest / ".installed"
    if stamp.is_file():
        return dest
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
           "--target", str(dest), "--upgrade", f"{package}=={version}"]
    done = subprocess.run(cmd, capture_output=quiet, text=True)
    if done.returncode != 0:
        raise SmolshipError(f"Could not install {package}=={version} for the apps' runtime check "
                            f"({(done.stderr or '').strip().splitlines()[-1:] or 'pip failed'}).",
                            "Check the network to PyPI, then run `make setup` again.")
    stamp.write_text(version)
    return dest


def app_runtime(package: str, version: str, note: str = "", install: bool = True) -> Platform:
    dest = runtime_dir(package, version)
    if not (dest / ".installed").is_file():
        if not install:
            raise SmolshipError(f"The {package} {version} runtime is not installed here.", "Run `make setup`.")
        install_app_runtime(package, version)
    return Platform(f"{package} {version}", (sys.executable,), child_env([dest]), note=note)


def app_platforms(target: str, install: bool = True) -> list[Platform]:
    """One platform per runtime version the apps pin that differs from the one installed here."""
    here = installed_version(target)
    out: dict[str, Platform] = {}
    for rt in APP_RUNTIMES:
        if rt.package == target and rt.version != here:
            note = f"{rt.app} app pin ({rt.pinned_in})"
            out[rt.version] = app_runtime(rt.package, rt.version, note, install)
    return list(out.values())


def arm64_env_file() -> Path:
    return venv_dir() / "arm64" / "env.json"


def arm64(cpu: str | None = None) -> Platform:
    """arm64 CPython under qemu user-mode with the aarch64 wheels; `cpu` a qemu CPU name env.json lists.
    The command is env.json's recipe (scripts/arm64_env.py): [qemu, -L, the CPU's prefix, python] with the
    host environment minus `unset`, plus `env` and QEMU_CPU."""
    path = arm64_env_file()
    if not path.is_file():
        raise SmolshipError("The emulated arm64 environment is not set up.",
                            "Run `make setup-arm64` (qemu-user-static + arm64 Python + aarch64 wheels, ~4 GB).")
    env = json.loads(path.read_text())
    cpus = env["cpus"]
    cpu = cpu or env.get("default_cpu") or next(iter(cpus))
    if cpu not in cpus:
        raise SmolshipError(f"Unknown arm64 CPU '{cpu}'.", f"Use one of: {', '.join(cpus)}.")
    spec = cpus[cpu]
    argv = (env["qemu"], "-L", spec["prefix"], env["python"])
    child = child_env([env["site"]], **{k: v for k, v in env.get("env", {}).items() if k != "PYTHONPATH"},
                      QEMU_CPU=spec["qemu_cpu"])
    for name in env.get("unset", []):
        if name not in ("PYTHONPATH", "QEMU_CPU"):
            child.pop(name, None)
    unsupported = {}
    for target in HOSTED_TARGETS:  # env.json's parts are named after the targets
        part = env.get("parts", {}).get(target)
        if part is None:
            unsupported[target] = f"the arm64 environment has no {target} runtime (`make setup-arm64` builds it)"
        elif cpu in part.get("unsupported_cpus", {}):
            unsupported[target] = part["unsupported_cpus"][cpu]
    return Platform(f"arm64 {cpu} (qemu)", argv, child, arch="aarch64", cpu=cpu, note=spec.get("note", ""),
                    unsupported=unsupported)


def parse_arch(spec: str) -> Platform:
    """'arm64' or 'arm64:<cpu>'."""
    arch, _, cpu = spec.partition(":")
    if arch not in ("arm64", "aarch64"):
        raise SmolshipError(f"--arch '{spec}' is not supported.", "Use --arch arm64 or --arch arm64:<qemu cpu>.")
    return arm64(cpu or None)


def parse_runtime(spec: str, target: str) -> list[Platform]:
    """'apps' (every version the apps pin) or 'PACKAGE==VERSION'."""
    if spec == "apps":
        return app_platforms(target)
    package, sep, version = spec.partition("==")
    if not sep or not version:
        raise SmolshipError(f"--runtime '{spec}' is not understood.", "Use --runtime apps or --runtime executorch==1.5.0.")
    if package != target:
        raise SmolshipError(f"--runtime {spec} cannot run a {target} bundle.", f"Name a {target} runtime.")
    return [app_runtime(package, version)]


def divergence(a: np.ndarray, b: np.ndarray) -> dict:
    """KL(a || b), top-1 agreement and max |Δlogit| between two runtimes' logits of the same tokens."""
    la, lb = log_softmax(a), log_softmax(b)
    kl = (np.exp(la) * (la - lb)).sum(-1).clip(min=0.0)
    return {"kld_mean": float(kl.mean()), "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
            "max_abs_logit_diff": float(np.abs(a - b).max())}


PARITY_KEYS = ("kld_mean", "kld_p99", "top1_agreement", "max_abs_logit_diff", "nll_delta", "greedy_match", "eval_tokens")


def _entry(runner, info: dict, ref, docs, logits: list) -> dict:
    parity = measure_parity(runner, ref, docs, PLATFORM_PARITY, logits_out=logits)
    return {**info, **{k: parity[k] for k in PARITY_KEYS}}


def measure_platforms(bundle: Path, manifest: dict, native_runner, ref, docs, platforms: list[Platform],
                      progress=None) -> list[dict]:
    """Parity of the bundle natively and on each platform over `docs`; each foreign row also holds its
    divergence from the native runtime (`vs_native`) and `finding` when its kld exceeds 1.5x the native one (and 1e-3)."""
    from smolship.validation.runtime_host import cpu_features, runtime_versions

    import platform as host

    native_logits: list = []
    rows = [_entry(native_runner, {"platform": "native", "arch": host.machine(), "cpu": None,
                                   "cpu_features": cpu_features(), "versions": runtime_versions(manifest["target"])},
                   ref, docs, native_logits)]
    for i, plat in enumerate(platforms):
        if progress:
            progress(f"parity on {plat.label}", (i + 1) / (len(platforms) + 1))
        if manifest["target"] in plat.unsupported:  # a known limit of that build: a row that says so, not a crash
            rows.append({"platform": plat.label, "arch": plat.arch, "cpu": plat.cpu,
                         "error": plat.unsupported[manifest["target"]]})
            continue
        try:
            runner = plat.runner(bundle)
        except SmolshipError as e:
            rows.append({"platform": plat.label, "arch": plat.arch, "cpu": plat.cpu, "error": e.problem})
            continue
        try:
            logits: list = []
            info = {"platform": plat.label, "arch": runner.info["arch"], "cpu": plat.cpu,
                    "cpu_features": runner.info["cpu_features"], "versions": runner.info["versions"], "note": plat.note}
            row = _entry(runner, info, ref, docs, logits)
        finally:
            runner.close()
        row["vs_native"] = divergence(np.concatenate(native_logits), np.concatenate(logits))
        row["finding"] = bool(row["kld_mean"] > max(DIVERGENCE_FACTOR * rows[0]["kld_mean"], DIVERGENCE_FLOOR))
        rows.append(row)
    return rows


def main() -> None:
    """`python -m smolship.validation.platforms`: install every runtime version the apps pin (make setup)."""
    for target in sorted({rt.package for rt in APP_RUNTIMES}):
        for plat in app_platforms(target):
            print(f"smolship setup: {plat.label} for the {plat.note}")


if __name__ == "__main__":
    main()
