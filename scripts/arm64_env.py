#!/usr/bin/env python3
"""Build an emulated arm64 Python in which the bundles' runtimes run on the phone's kernels (qemu user-mode).

Usage (any python3 with pip; standard library only; CI runs it as root on Debian 12):

    python3 scripts/arm64_env.py [--dest .venv/arm64] [--parts onnx,executorch,gguf] [--cpus a,b]
                                 [--venv .venv] [--verify] [--keep-downloads]
    python3 scripts/arm64_env.py --dest .venv/arm64 --print-command cortex-a76

Every step is stamped under DEST/.stamps (one stamp per part, keyed by what it was built from), so a second
run only re-reads the stamps and rewrites env.json (about a second). What it builds under DEST:

    root/      Debian's arm64 CPython 3.11 + C/C++ runtime libraries, from .debs fetched with a private APT
               configuration (APT::Architecture "arm64", own state and cache) and unpacked with `dpkg -x`.
               The host's dpkg architectures are never touched.
    cpus/<n>/  one `-L` prefix per emulated CPU: symlinks to root/ plus a fake arm64 proc/cpuinfo and
               sys/devices/system/cpu/cpuN/regs/identification/midr_el1 made from what that CPU reports.
               qemu 7.2 shows the guest the host's x86 /proc/cpuinfo (pytorch's cpuinfo then crashes) and no
               MIDR files (oneDNN's xbyak warns); a prefix per CPU keeps two CPUs safe to run side by side.
    site/      aarch64 wheels (pip --target, --platform manylinux_2_*_aarch64), pinned to the versions of
               the x86 virtualenv (--venv; built-in pins otherwise), and for "gguf" llama-cpp-python's
               Python package with an arm64 llama.cpp cross-compiled from its sdist (site/llama_cpp/lib).
    env.json   the facts other code needs to run the arm64 python without importing this script.

Parts: "onnx" (onnxruntime, onnxruntime-genai), "executorch" (torch with its CUDA dependency wheels: PyPI's
aarch64 torch is the CUDA build and will not load without them; executorch, torchao and the few pure
packages its runtime imports), "gguf" (llama.cpp + llama_cpp). A failing step prints one line naming the
problem and the fix, and exits 2.

env.json (schema 1; paths absolute; example from this machine, lists shortened):

    {
      "schema": 1,
      "dest": "/work/main/.venv/arm64",
      "qemu": "/usr/bin/qemu-aarch64-static",            # the emulator
      "qemu_version": "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)",
      "root": ".../root",                                # the arm64 Debian files
      "site": ".../site",                                # the guest's PYTHONPATH
      "python": ".../root/usr/bin/python3.11",           # the arm64 interpreter (a host path)
      "python_version": "3.11.2", "debian_python": "3.11.2-6+deb12u9",
      "env": {"PYTHONPATH": ".../site", "PYTHONNOUSERSITE": "1"},  # set these (plus QEMU_CPU)
      "unset": ["PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD", ...],  # drop these
      "default_cpu": "cortex-a76",
      "cpus": {                                          # each CPU this qemu knows, probed in the guest
        "cortex-a76": {
          "qemu_cpu": "cortex-a76",                      # the QEMU_CPU value
          "prefix": ".../cpus/cortex-a76",               # qemu's -L for this CPU (its own /proc/cpuinfo)
          "midr": "0x414fd0b1", "hwcap": 1155067, "hwcap2": 0,
          "sve_vector_bytes": null,                      # SVE vector length; null without SVE
          "features": ["fp", "asimd", "aes", ..., "atomics", "fphp", "asimdhp", ..., "asimddp"],
          "note": "armv8.2 big core: dotprod + fp16 (2019-2021 phones)"},
        "cortex-a53": {...}, "cortex-a72": {...}, "max-nosme": {...}},
      "parts": {                                         # only parts built and current
        "onnx": {
          "packages": {"numpy": "2.3.5", "onnxruntime": "1.31.1", "onnxruntime-genai": "0.18.0"},
          "pins_from": "venv /work/main/.venv (20 pins), defaults for the rest",
          "download_bytes": 46891315, "build_seconds": 5.9,
          "cpus": ["cortex-a53", "cortex-a72", "cortex-a76", "max-nosme"],  # CPUs it can run on
          "unsupported_cpus": {},                        # {cpu: why not}
          "verified": {"cortex-a76": {"onnxruntime": "1.31.1", "max_abs_err": 0.0, "seconds": 3.2}, ...}},
        "executorch": {
          "packages": {"torch": "2.13.0", "executorch": "1.5.1", "nvidia-cublas": "13.1.1.3", ...},
          "skipped_torch_deps": ["cuda-bindings", "cuda-pathfinder", "triton"],
          "cpus": ["cortex-a76", "max-nosme"], "unsupported_cpus": {"cortex-a72": "lacks 'atomics': ..."},
          "verified": {"cortex-a76": {"torch": "2.13.0+cu130", "import_seconds": 37.2, "operators": 270,
                                      "backends": ["OpenvinoBackend", "XnnpackBackend"], "seconds": 40.5}}, ...},
        "gguf": {
          "packages": {"llama-cpp-python": "0.3.36", ...}, "llama_cpp_commit": "0c1e570",
          "ggml_variants": ["armv8.0_1", "armv8.2_2", "armv8.6_2"], "ggml_backend_dir": ".../site/llama_cpp/lib",
          "compiler": "aarch64-linux-gnu-g++ (Debian 12.2.0-14) 12.2.0", "compile_seconds": 160.2,
          "verified": {"cortex-a76": {"ggml_variant": "armv8.2_2", "system_info": "CPU : NEON = 1 | ...",
                                      "llama_cpp": "0.3.36", "seconds": 3.1}, ...}, ...}},
      "disk_bytes": 4441721853
    }

To run the guest: argv = [qemu, "-L", cpus[c].prefix, python] + args; env = host env minus "unset", plus
"env", plus QEMU_CPU = cpus[c].qemu_cpu. python_command(dest, cpu) below does exactly that.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAMP_VERSION = 1  # bump to rebuild every part after a change to how parts are built
PY_TAG = "3.11"
CODENAMES = {"12": "bookworm", "13": "trixie"}
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
ROOT_DEBS = ["python3.11", "libgomp1", "libstdc++6", "libatomic1"]

# Versions measured together (Dec 2026). The x86 virtualenv's versions win where it has the package.
DEFAULT_PINS = {
    "numpy": "2.3.5", "onnxruntime": "1.31.1", "onnxruntime-genai": "0.18.0",
    "torch": "2.13.0", "executorch": "1.5.1", "torchao": "0.18.0",
    "ruamel-yaml": "0.19.1", "tabulate": "0.10.0", "flatbuffers": "25.12.19",
    "typing-extensions": "4.16.0", "diskcache": "5.6.3", "jinja2": "3.1.6", "markupsafe": "3.0.4",
    "filelock": "4.3.2", "sympy": "1.14.0", "mpmath": "1.3.0", "networkx": "3.6.1",
    "fsspec": "2026.9.0", "setuptools": "84.2.1", "llama-cpp-python": "0.3.36",
}
# torch 2.13.0's aarch64 (CUDA) dependencies as pip resolved them; constraints only, so a torch of another
# version resolves its own set. The x86 venv has none of these (its torch is the +cpu build).
TORCH_AARCH64_PINS = {
    "2.13.0": {
        "cuda-toolkit": "13.0.3.0", "nvidia-cublas": "13.1.1.3", "nvidia-cuda-cupti": "13.0.85",
        "nvidia-cuda-nvrtc": "13.0.88", "nvidia-cuda-runtime": "13.0.96", "nvidia-cudnn-cu13": "9.20.0.48",
        "nvidia-cufft": "12.0.0.61", "nvidia-cufile": "1.15.1.6", "nvidia-curand": "10.4.0.35",
        "nvidia-cusolver": "12.0.4.66", "nvidia-cusparse": "12.6.3.3", "nvidia-cusparselt-cu13": "0.8.1",
        "nvidia-nccl-cu13": "2.29.7", "nvidia-nvjitlink": "13.5.37", "nvidia-nvshmem-cu13": "3.4.5",
        "nvidia-nvtx": "13.0.85",
    },
}
# Python-only torch dependencies that `import torch` never loads (triton: 185 MB; cuda-bindings: 7 MB).
TORCH_SKIP = ("triton", "cuda-bindings", "cuda-pathfinder")
# What each part installs with --no-deps: found by importing the runtimes under emulation and listing
# which site packages ended up in sys.modules.
PART_WHEELS = {
    "onnx": ["numpy", "onnxruntime", "onnxruntime-genai"],
    "executorch": ["numpy", "executorch", "torchao", "ruamel-yaml", "tabulate", "flatbuffers"],
    "gguf": ["numpy", "typing-extensions", "diskcache", "jinja2", "markupsafe"],
}
PARTS = ("onnx", "executorch", "gguf")
# CPU features a part cannot run without (found under emulation: SIGILL on CPUs lacking them).
PART_NEEDS = {
    "executorch": ("atomics", "executorch 1.5.1's aarch64 libcustom_ops_aot_lib.so uses LSE atomics (armv8.1+) "
                   "without a runtime check: importing custom_ops dies with SIGILL on armv8.0 cores"),
}

# Emulated CPUs: (name, QEMU_CPU, qemu model that must exist, what it stands for). qemu 7.2 knows
# a64fx, cortex-a35/a53/a57/a72/a76, neoverse-n1 and max; cortex-a710 / neoverse-n2 come with qemu 8+.
# "max" without SME: qemu 7.2's SME gives wrong ExecuTorch results; 16-byte SVE like phones' cores;
# pauth-impdef halves emulation time (same features, cheaper pointer-auth hash).
CPU_TABLE = [
    ("cortex-a53", "cortex-a53", "cortex-a53", "armv8.0 in-order little core: no dotprod, no fp16 (XNNPACK has A53-tuned kernels)"),
    ("cortex-a72", "cortex-a72", "cortex-a72", "armv8.0 big core: NEON only, no dotprod"),
    ("cortex-a76", "cortex-a76", "cortex-a76", "armv8.2 big core: dotprod + fp16 (2019-2021 phones)"),
    ("cortex-a710", "cortex-a710", "cortex-a710", "armv9.0: i8mm, bf16, sve2 (qemu 8+ only)"),
    ("max-nosme", "max,sme=off,sve-default-vector-length=16,pauth-impdef=on", "max",
     "qemu's max CPU minus SME: dotprod, i8mm, bf16, sve/sve2 at 128 bits (armv9 phone cores' kernel paths)"),
]
DEFAULT_CPU = "cortex-a76"

# llama.cpp CPU backend variants (GGML_CPU_ALL_VARIANTS names) built by default: one per CPU class above.
# ggml loads the best one the CPU's HWCAPs allow. armv9.2 (SME) needs gcc >= 14: Debian 12 has 12.
GGML_VARIANTS = ("armv8.0_1", "armv8.2_2", "armv8.6_2")

# Linux arm64 AT_HWCAP / AT_HWCAP2 bits in order, spelled as /proc/cpuinfo spells them.
HWCAP_NAMES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
               "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg "
               "gcs cmpbr fprcvt f8mm8 f8mm4 svef16mm svelut6 sveb16mm").split()
HWCAP2_NAMES = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
                "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 "
                "smef16f32 smeb16f32 smef32f32 smefa64 wfxt ebf16 sveebf16 cssc rprfm sve2p1 sme2 sme2p1 "
                "smei16i32 smebi32i32 smeb16b16 smef16f16 mops hbc sveb16b16 lrcpc3 lse128 fpmr lut faminmax "
                "f8cvt f8fma f8dp4 f8dp2 f8e4m3 f8e5m2 smelutv2 smef8f16 smef8f32 smesf8fma smesf8dp4 "
                "smesf8dp2 poe").split()

# Host variables that would leak into the guest (qemu passes the whole environment on).
UNSET_VARS = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONEXECUTABLE",
              "PYTHONPLATLIBDIR", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD", "QEMU_LD_PREFIX",
              "QEMU_CPU", "QEMU_STRACE", "QEMU_GUEST_BASE", "QEMU_RESERVED_VA", "LLAMA_CPP_LIB_PATH",
              "GGML_BACKEND_PATH")
SHELL_UNSET = ("PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD")  # the printed command's share


class Fail(Exception):
    """A step failed: `problem` says what, `fix` says what to do about it."""

    def __init__(self, problem, fix):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def say(msg):
    """One progress line (CI logs show them as they come)."""
    print("arm64_env: " + msg, flush=True)


def canon(name):
    """PEP 503 name, so 'ruamel.yaml', 'Ruamel_YAML' and 'ruamel-yaml' are one key."""
    return re.sub(r"[-_.]+", "-", name).lower()


def run(cmd, log, what, fix, env=None, cwd=None):
    """Run a host command with its output in `log`; fail with one line naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(str(c) for c in cmd) + "\n").encode())
        out.flush()
        try:
            code = subprocess.call([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        except OSError as err:
            raise Fail("%s: cannot run %s (%s)" % (what, cmd[0], err), fix)
    if code != 0:
        raise Fail("%s failed (exit %d; log: %s)" % (what, code, log), fix)


def du(path):
    """Bytes under path, symlinks not followed (what the folder costs on disk, roughly)."""
    total = 0
    for top, dirs, files in os.walk(str(path)):
        for f in files:
            p = os.path.join(top, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def mb(n):
    return "%.0f MB" % (n / 1e6)


# ----------------------------------------------------------------------------------------------- stamps

def stamp_key(*parts):
    """A short hash of everything a step was built from; a changed input rebuilds the step."""
    return hashlib.sha256(json.dumps([STAMP_VERSION] + list(parts), sort_keys=True).encode()).hexdigest()[:16]


def stamp_read(dest, name, key):
    """The info saved with a stamp, or None when the step must run (missing, or built from other inputs)."""
    path = dest / ".stamps" / (name + ".json")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get("info") if data.get("key") == key else None


def stamp_write(dest, name, key, info):
    path = dest / ".stamps" / (name + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "info": info}, indent=1, sort_keys=True))
    tmp.replace(path)


def stamp_drop(dest, name):
    """Forget a step before rebuilding it, so a crash half-way never leaves a valid stamp."""
    try:
        (dest / ".stamps" / (name + ".json")).unlink()
    except OSError:
        pass


# ---------------------------------------------------------------------------------------- host packages

def apt_install(packages, what, log):
    """Install Debian packages on the host (CI is root on Debian 12); otherwise say the command to run."""
    fix = "run `sudo apt-get install -y %s` and re-run" % " ".join(packages)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Fail("%s is missing" % what, fix)
    say("apt-get install %s" % " ".join(packages))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + packages, log, "apt-get install", fix, env=env)
    except Fail:  # a fresh container has no package lists yet
        run(["apt-get", "update", "-q"], log, "apt-get update", fix, env=env)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + packages, log, "apt-get install", fix, env=env)


def ensure_tools(tools, packages, what, log):
    """Make sure every command in `tools` is on PATH, installing `packages` once if one is not."""
    if not all(shutil.which(t) for t in tools):
        apt_install(packages, what, log)
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        raise Fail("%s still missing after installing %s" % (", ".join(missing), " ".join(packages)),
                   "install them by hand and re-run")


def qemu_facts(log):
    """Path, version and CPU model names of qemu-aarch64-static (installed with apt when missing)."""
    ensure_tools(["qemu-aarch64-static"], ["qemu-user-static"], "qemu-aarch64-static (package qemu-user-static)", log)
    qemu = shutil.which("qemu-aarch64-static")
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
    version = re.search(r"version (.*)", out)
    models = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True).stdout.split()
    return qemu, version.group(1).strip() if version else "unknown", [m for m in models if m not in ("Available", "CPUs:")]


def debian_codename():
    """The host's Debian codename: the arm64 root must match the cross compiler's glibc/libstdc++."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "bookworm"
    name = re.search(r"^VERSION_CODENAME=(\w+)", text, re.M)
    if name:
        return name.group(1)
    version = re.search(r'^VERSION_ID="?(\d+)', text, re.M)
    return CODENAMES.get(version.group(1), "bookworm") if version else "bookworm"


# ------------------------------------------------------------------------------------------- arm64 root

def write_apt_config(apt_dir, codename):
    """A private APT for arm64: own sources, state and cache; nothing of the host's dpkg changes."""
    for sub in ("state/lists/partial", "cache/archives/partial", "etc/sources.list.d", "etc/preferences.d"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "state" / "status").touch()
    opts = "[arch=arm64 signed-by=%s]" % KEYRING
    (apt_dir / "etc" / "sources.list").write_text(
        "deb %s %s %s main\n" % (opts, DEBIAN_MIRROR, codename)
        + "deb %s %s %s-updates main\n" % (opts, DEBIAN_MIRROR, codename)
        + "deb %s %s %s-security main\n" % (opts, DEBIAN_SECURITY, codename))
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    conf = apt_dir / "apt.conf"
    conf.write_text("\n".join([
        'APT::Architecture "arm64";', 'APT::Architectures { "arm64"; };',
        'APT::Install-Recommends "false";', 'APT::Sandbox::User "%s";' % user,
        'Dir::State "%s";' % (apt_dir / "state"), 'Dir::State::status "%s";' % (apt_dir / "state" / "status"),
        'Dir::Cache "%s";' % (apt_dir / "cache"),
        'Dir::Etc::SourceList "%s";' % (apt_dir / "etc" / "sources.list"),
        'Dir::Etc::SourceParts "%s";' % (apt_dir / "etc" / "sources.list.d"),
        'Dir::Etc::Preferences "%s";' % (apt_dir / "etc" / "preferences"),
        'Dir::Etc::PreferencesParts "%s";' % (apt_dir / "etc" / "preferences.d"),
        'Debug::NoLocking "true";', ""]))
    return conf


def fetch_root_debs(dest, log):
    """Download python3.11 and its runtime closure for arm64; returns the .deb paths."""
    if not Path(KEYRING).exists():
        raise Fail("%s is missing (needed to check Debian's arm64 package lists)" % KEYRING,
                   "run `apt-get install -y debian-archive-keyring` and re-run")
    ensure_tools(["apt-get", "dpkg"], ["apt", "dpkg"], "apt-get / dpkg", log)
    apt_dir = dest / "apt"
    conf = write_apt_config(apt_dir, debian_codename())
    env = dict(os.environ, APT_CONFIG=str(conf), DEBIAN_FRONTEND="noninteractive")
    fix = "check that deb.debian.org is reachable (log above), then re-run"
    run(["apt-get", "update", "-q"], log, "apt-get update (arm64 lists)", fix, env=env)
    run(["apt-get", "install", "-y", "-q", "--download-only"] + ROOT_DEBS, log, "apt-get --download-only (arm64)", fix, env=env)
    return sorted((apt_dir / "cache" / "archives").glob("*.deb"))


def relink_absolute_symlinks(root):
    """Point absolute symlinks inside root back into root (the host would resolve them to its own files)."""
    for top, dirs, files in os.walk(str(root)):
        for name in dirs + files:
            link = os.path.join(top, name)
            target = os.readlink(link) if os.path.islink(link) else None
            if target and target.startswith("/"):
                os.unlink(link)
                os.symlink(os.path.relpath(str(root) + target, top), link)


def build_root(dest, log):
    """DEST/root: Debian's arm64 python3.11 unpacked with dpkg -x (no maintainer scripts, no dpkg database)."""
    debs = fetch_root_debs(dest, log)
    root = dest / "root"
    shutil.rmtree(str(root), ignore_errors=True)
    root.mkdir(parents=True)
    for deb in debs:
        run(["dpkg", "-x", deb, root], log, "dpkg -x %s" % deb.name, "delete %s and re-run" % dest)
    relink_absolute_symlinks(root)
    python = root / "usr" / "bin" / ("python" + PY_TAG)
    if not python.exists():
        raise Fail("%s was not unpacked" % python, "delete %s and re-run" % dest)
    deb = [d.name for d in debs if d.name.startswith("python%s_" % PY_TAG)]
    size = sum(d.stat().st_size for d in debs)
    shutil.rmtree(str(dest / "apt"), ignore_errors=True)  # .debs unpacked, lists no longer needed: 35 MB less
    return {"debian_python": deb[0].split("_")[1] if deb else "unknown", "debs": len(debs), "download_bytes": size}


# ------------------------------------------------------------------------------------------ CPU overlays

PROBE = r"""
import ctypes, json, mmap
libc = ctypes.CDLL(None)
libc.getauxval.restype = ctypes.c_ulong
libc.getauxval.argtypes = [ctypes.c_ulong]
# mrs x0, MIDR_EL1; ret -- user space may read ID registers: Linux (and qemu-user) emulate the trap
buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write((0xd5380000).to_bytes(4, "little") + (0xd65f03c0).to_bytes(4, "little"))
midr = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))()
vl = libc.prctl(51, 0, 0, 0, 0)  # PR_SVE_GET_VL: vector length in bytes, or -1 without SVE
print(json.dumps({"hwcap": libc.getauxval(16), "hwcap2": libc.getauxval(26), "midr": midr,
                  "sve_vector_bytes": (vl & 0xffff) if vl >= 0 else None}))
"""


def decode_features(hwcap, hwcap2):
    """HWCAP/HWCAP2 bits as the names /proc/cpuinfo prints (unknown bits as hwcap_bitN)."""
    names = []
    for value, table, prefix in ((hwcap, HWCAP_NAMES, "hwcap"), (hwcap2, HWCAP2_NAMES, "hwcap2")):
        for bit in range(64):
            if value >> bit & 1:
                names.append(table[bit] if bit < len(table) else "%s_bit%d" % (prefix, bit))
    return names


def host_cpu_count():
    """How many CPUs the kernel says are possible: the fake cpuinfo lists that many, like sysfs does."""
    try:
        spec = Path("/sys/devices/system/cpu/possible").read_text().strip()
        return max(int(x) for x in re.split(r"[-,]", spec)) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def probe_cpu(qemu, dest, qemu_cpu, log):
    """What the emulated CPU really reports (HWCAPs, MIDR, SVE length), read inside the guest."""
    env = clean_env({"QEMU_CPU": qemu_cpu, "PYTHONNOUSERSITE": "1"})
    cmd = [qemu, "-L", str(dest / "root"), str(dest / "root" / "usr" / "bin" / ("python" + PY_TAG)), "-c", PROBE]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    with open(log, "a") as out:
        out.write("\n$ QEMU_CPU=%s probe\n%s%s" % (qemu_cpu, proc.stdout, proc.stderr))
    if proc.returncode != 0:
        raise Fail("qemu CPU '%s' did not start the arm64 python (log: %s)" % (qemu_cpu, log),
                   "drop it with --cpus, or use a qemu that knows it (`qemu-aarch64-static -cpu help`)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpuinfo_text(probe, ncpu):
    """An arm64 /proc/cpuinfo consistent with the CPU's HWCAPs and MIDR (what pytorch cpuinfo parses)."""
    midr = probe["midr"]
    block = ("BogoMIPS\t: 125.00\nFeatures\t: %s\nCPU implementer\t: 0x%02x\nCPU architecture: 8\n"
             "CPU variant\t: 0x%x\nCPU part\t: 0x%03x\nCPU revision\t: %d\n\n") % (
        " ".join(decode_features(probe["hwcap"], probe["hwcap2"])), midr >> 24 & 0xff, midr >> 20 & 0xf,
        midr >> 4 & 0xfff, midr & 0xf)
    return "".join("processor\t: %d\n%s" % (i, block) for i in range(ncpu))


def write_cpu_prefix(dest, name, probe, ncpu):
    """DEST/cpus/<name>: qemu's -L prefix for one CPU (root via symlinks, its own cpuinfo and MIDR files)."""
    prefix = dest / "cpus" / name
    shutil.rmtree(str(prefix), ignore_errors=True)
    prefix.mkdir(parents=True)
    for entry in sorted((dest / "root").iterdir()):
        os.symlink(os.path.join("..", "..", "root", entry.name), str(prefix / entry.name))
    (prefix / "proc").mkdir()
    (prefix / "proc" / "cpuinfo").write_text(cpuinfo_text(probe, ncpu))
    for i in range(ncpu):  # what oneDNN's xbyak_aarch64 reads; other /sys files still come from the host
        ident = prefix / "sys" / "devices" / "system" / "cpu" / ("cpu%d" % i) / "regs" / "identification"
        ident.mkdir(parents=True)
        (ident / "midr_el1").write_text("0x%016x\n" % probe["midr"])
        (ident / "revidr_el1").write_text("0x%016x\n" % 0)
    return prefix


def build_cpus(qemu, models, dest, wanted, log):
    """Probe each wanted CPU qemu knows and write its prefix; returns env.json's "cpus"."""
    ncpu = host_cpu_count()
    cpus = {}
    for name, qemu_cpu, model, note in CPU_TABLE:
        if name not in wanted:
            continue
        if model not in models:
            say("cpu %s: skipped, this qemu has no '%s' model" % (name, model))
            continue
        probe = probe_cpu(qemu, dest, qemu_cpu, log)
        prefix = write_cpu_prefix(dest, name, probe, ncpu)
        features = decode_features(probe["hwcap"], probe["hwcap2"])
        cpus[name] = {"qemu_cpu": qemu_cpu, "prefix": str(prefix), "midr": "0x%08x" % probe["midr"],
                      "hwcap": probe["hwcap"], "hwcap2": probe["hwcap2"],
                      "sve_vector_bytes": probe["sve_vector_bytes"], "features": features, "note": note}
        say("cpu %s: %s" % (name, " ".join(f for f in features if f in ("asimddp", "fphp", "i8mm", "bf16", "sve", "sve2", "sme")) or "baseline"))
    unknown = set(wanted) - {c[0] for c in CPU_TABLE}
    if unknown:
        raise Fail("unknown CPU name(s): %s" % ", ".join(sorted(unknown)),
                   "pick from %s" % ", ".join(c[0] for c in CPU_TABLE))
    if not cpus:
        raise Fail("none of the wanted CPUs is known to this qemu", "check `qemu-aarch64-static -cpu help`")
    return cpus


# ---------------------------------------------------------------------------------------------- wheels

def platform_args():
    """pip's flags for aarch64 CPython 3.11 wheels: every manylinux level up to Debian 12's glibc 2.36."""
    args = ["--only-binary=:all:", "--python-version", PY_TAG, "--implementation", "cp", "--abi", "cp311",
            "--abi", "abi3", "--abi", "none", "--platform", "manylinux2014_aarch64"]
    for minor in range(17, 37):
        args += ["--platform", "manylinux_2_%d_aarch64" % minor]
    return args


def pip_command(log):
    """This interpreter's pip (any python3 does; Debian's lets --target past its externally-managed guard)."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        raise Fail("%s has no pip module" % sys.executable,
                   "run with a python that has pip (e.g. .venv/bin/python) or `apt-get install -y python3-pip`")
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def venv_versions(venv):
    """{canonical name: version} of what the x86 virtualenv has installed (local labels such as +cpu cut)."""
    versions = {}
    for meta in sorted(Path(venv).glob("lib/python*/site-packages/*.dist-info/METADATA")):
        name = version = None
        with open(str(meta), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Name:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip().split("+")[0]
                if (name and version) or not line.strip():
                    break
        if name and version:
            versions[canon(name)] = version
    return versions


def resolve_pins(venv):
    """The pins: built-in defaults, overridden by the x86 venv's versions (so both sides run the same)."""
    pins = dict(DEFAULT_PINS)
    found = venv_versions(venv) if venv and Path(venv).is_dir() else {}
    used = {k: found[k] for k in pins if k in found}
    pins.update(used)
    pins.update(TORCH_AARCH64_PINS.get(pins["torch"], {}))
    source = "venv %s (%d pins), defaults for the rest" % (venv, len(used)) if used else "built-in defaults"
    return pins, source


def wheel_name(path):
    """Canonical project name of a wheel file."""
    return canon(Path(path).name.split("-")[0])


def download_wheels(pip, part, pins, folder, log):
    """Fetch the part's aarch64 wheels into folder; torch's own dependency tree is resolved by pip."""
    shutil.rmtree(str(folder), ignore_errors=True)
    folder.mkdir(parents=True)
    constraints = folder / "constraints.txt"
    constraints.write_text("".join("%s==%s\n" % kv for kv in sorted(pins.items())))
    fix = "check that PyPI has aarch64 cp311 wheels for these pins (log), then re-run"
    base = pip + ["download", "-q", "-d", folder, "-c", constraints] + platform_args()
    if part == "executorch":
        run(base + ["torch==" + pins["torch"]], log, "pip download torch (aarch64, with dependencies)", fix)
    run(base + ["--no-deps"] + ["%s==%s" % (n, pins[n]) for n in PART_WHEELS[part]], log,
        "pip download %s wheels (aarch64)" % part, fix)
    wheels = sorted(folder.glob("*.whl"))
    keep = [w for w in wheels if wheel_name(w) not in TORCH_SKIP]
    return keep, sum(w.stat().st_size for w in wheels), sorted({wheel_name(w) for w in wheels} - {wheel_name(w) for w in keep})


def install_wheels(pip, wheels, site, log):
    """Unpack wheels into DEST/site (--upgrade: a package shared by two parts is replaced, not skipped).

    A host CPython 3.11 writes the .pyc files the guest's 3.11 reads (same bytecode): compiling torch on
    the host takes seconds, in the guest's first import about a minute.
    """
    site.mkdir(parents=True, exist_ok=True)
    compile_flag = "--compile" if sys.version_info[:2] == (3, 11) else "--no-compile"
    run(pip + ["install", "-q", "--no-deps", "--no-index", "--upgrade", compile_flag, "--root-user-action=ignore",
               "--target", site] + platform_args() + wheels, log, "pip install --target %s" % site,
        "delete %s and re-run" % site)


def wheel_versions(wheels):
    return {wheel_name(w): Path(w).name.split("-")[1] for w in wheels}


# ------------------------------------------------------------------------------------------- llama.cpp

TOOLCHAIN = """set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
"""


def index_file(project, filename, dest_file):
    """Fetch one file from the package index (PEP 691 JSON), checking its sha256; False if the index can't.

    `pip download --no-binary` would first install the sdist's build backend to read its metadata: 4 min
    here for a file that takes 1 s to fetch.
    """
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    cert = os.environ.get("PIP_CERT")
    context = ssl.create_default_context(cafile=cert if cert and os.path.exists(cert) else None)
    page = "%s/%s/" % (index, canon(project))
    try:
        req = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(req, timeout=60, context=context) as resp:
            files = json.loads(resp.read().decode()).get("files", [])
        entry = [f for f in files if f.get("filename") == filename][0]
        digest = hashlib.sha256()
        with urllib.request.urlopen(urllib.parse.urljoin(page, entry["url"]), timeout=300, context=context) as resp, \
                open(str(dest_file), "wb") as out:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, ValueError, IndexError, KeyError):
        return False
    want = entry.get("hashes", {}).get("sha256")
    if want and digest.hexdigest() != want:
        raise Fail("%s does not match the index's sha256" % filename, "re-run (a proxy may have altered it)")
    return True


def fetch_llama_sdist(pip, version, folder, log):
    """llama-cpp-python's sdist, unpacked: its vendor/llama.cpp is exactly what the x86 wheel was built from."""
    shutil.rmtree(str(folder), ignore_errors=True)
    folder.mkdir(parents=True)
    name = "llama_cpp_python-%s.tar.gz" % version
    if not index_file("llama-cpp-python", name, folder / name):
        say("[gguf] index has no JSON API: pip download of the sdist (slow: it installs the build backend)")
        run(pip + ["download", "-q", "--no-deps", "--no-binary", ":all:", "-d", folder, "llama-cpp-python==" + version],
            log, "pip download llama-cpp-python sdist", "check that PyPI is reachable, then re-run")
    if not (folder / name).exists():
        raise Fail("no %s in %s" % (name, folder), "check the pip log: %s" % log)
    with tarfile.open(str(folder / name)) as tar:
        tar.extractall(str(folder), **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return folder / name[:-len(".tar.gz")], (folder / name).stat().st_size


def llama_commit(src):
    """The vendored llama.cpp commit (the sdist keeps its git metadata), for env.json."""
    out = subprocess.run(["git", "-C", str(src / "vendor" / "llama.cpp"), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def cmake_configure(src, build, lib_dir, log):
    """Configure llama.cpp for arm64: shared libs, CPU backends as loadable variants, nothing else."""
    (build.parent / "aarch64.cmake").write_text(TOOLCHAIN)
    args = ["cmake", "-G", "Unix Makefiles", "-S", src / "vendor" / "llama.cpp", "-B", build,
            "-DCMAKE_TOOLCHAIN_FILE=%s" % (build.parent / "aarch64.cmake"), "-DCMAKE_BUILD_TYPE=Release",
            "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON",
            "-DGGML_BACKEND_DIR=%s" % lib_dir, "-DGGML_OPENMP=ON", "-DLLAMA_BUILD_COMMON=OFF",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
            "-DCMAKE_INSTALL_RPATH=$ORIGIN", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON"]
    if shutil.which("ccache"):
        args += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    run(args, log, "cmake configure (llama.cpp, aarch64)", "see the log; g++-aarch64-linux-gnu and cmake >= 3.21 are needed")


def cmake_build(build, variants, log):
    """Compile only libllama, libggml(-base) and the wanted CPU variants.

    Make's <target>/fast skips target dependencies: libggml depends (for ordering only) on every
    variant, and the armv9.2 ones do not compile with gcc 12. Order matters, so one target at a time.
    """
    jobs = str(os.cpu_count() or 2)
    targets = ["ggml-base", "ggml", "llama"]
    for v in variants:
        targets += ["ggml-cpu-%s-feats" % v, "ggml-cpu-%s" % v]
    for target in targets:
        run(["make", "-C", build, "-j", jobs, target + "/fast"], log, "compile %s (aarch64)" % target,
            "see the log; check g++-aarch64-linux-gnu works (`aarch64-linux-gnu-g++ --version`)")


def install_llama_cpp(src, build, site, version):
    """llama_cpp's Python package from the sdist, with the arm64 libraries in llama_cpp/lib (where it looks)."""
    pkg = site / "llama_cpp"
    shutil.rmtree(str(pkg), ignore_errors=True)
    shutil.copytree(str(src / "llama_cpp"), str(pkg))
    lib = pkg / "lib"
    lib.mkdir(exist_ok=True)
    for so in sorted((build / "bin").glob("lib*.so*")):
        if so.is_symlink():
            os.symlink(os.readlink(str(so)), str(lib / so.name))
        else:
            shutil.copy2(str(so), str(lib / so.name))
    for old in site.glob("llama_cpp_python-*.dist-info"):
        shutil.rmtree(str(old))
    info = site / ("llama_cpp_python-%s.dist-info" % version)
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: %s\n" % version)
    (info / "INSTALLER").write_text("arm64_env\n")
    (info / "RECORD").write_text("")


def build_gguf(pip, dest, pins, variants, work, log):
    """The "gguf" part: cross-compile llama.cpp (llama-cpp-python's vendored copy) and install llama_cpp."""
    ensure_tools(["aarch64-linux-gnu-g++", "aarch64-linux-gnu-gcc"], ["g++-aarch64-linux-gnu"],
                 "the arm64 cross compiler (package g++-aarch64-linux-gnu)", log)
    ensure_tools(["cmake", "make"], ["cmake", "make"], "cmake / make", log)
    src, sdist_bytes = fetch_llama_sdist(pip, pins["llama-cpp-python"], work / "sdist", log)
    build = work / "build"
    shutil.rmtree(str(build), ignore_errors=True)
    lib_dir = dest / "site" / "llama_cpp" / "lib"
    say("[gguf] compiling llama.cpp %s for aarch64: libllama + CPU variants %s (~3 min on 2 cores)"
        % (llama_commit(src), ", ".join(variants)))
    started = time.time()
    cmake_configure(src, build, lib_dir, log)
    cmake_build(build, variants, log)
    compile_seconds = round(time.time() - started, 1)
    install_llama_cpp(src, build, dest / "site", pins["llama-cpp-python"])
    return {"llama_cpp_commit": llama_commit(src), "ggml_variants": list(variants),
            "compile_seconds": compile_seconds, "sdist_bytes": sdist_bytes,
            "ggml_backend_dir": str(lib_dir), "compiler": compiler_version()}


def compiler_version():
    out = subprocess.run(["aarch64-linux-gnu-g++", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


# -------------------------------------------------------------------------------------- guest commands

def clean_env(extra):
    """The host environment minus what would leak into the guest, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET_VARS}
    env.update(extra)
    return env


def python_command(dest, cpu=None):
    """(argv prefix, env) running DEST's arm64 python on emulated `cpu`; built from DEST/env.json alone."""
    info = json.loads((Path(dest) / "env.json").read_text())
    cpu = cpu or info["default_cpu"]
    if cpu not in info["cpus"]:
        raise KeyError("cpu %r not in %s (have: %s)" % (cpu, Path(dest) / "env.json", ", ".join(info["cpus"])))
    c = info["cpus"][cpu]
    env = {k: v for k, v in os.environ.items() if k not in info["unset"]}
    env.update(info["env"])
    env["QEMU_CPU"] = c["qemu_cpu"]
    return [info["qemu"], "-L", c["prefix"], info["python"]], env


def shell_command(dest, cpu):
    """python_command as one line to paste into a shell."""
    info = json.loads((Path(dest) / "env.json").read_text())
    c = info["cpus"][cpu]
    sets = " ".join("%s=%s" % kv for kv in sorted(dict(info["env"], QEMU_CPU=c["qemu_cpu"]).items()))
    unset = " ".join("-u " + v for v in SHELL_UNSET)
    return "env %s %s %s -L %s %s" % (unset, sets, info["qemu"], c["prefix"], info["python"])


def onnx_matmul_model():
    """A one-node ONNX model (MatMul [4,64] x [64,8], fp32) encoded by hand: no onnx package needed."""
    def varint(n):
        out = bytearray()
        while True:
            out.append((n & 0x7f) | (0x80 if n > 0x7f else 0))
            n >>= 7
            if not n:
                return bytes(out)

    def msg(num, payload):
        payload = payload.encode() if isinstance(payload, str) else payload
        return varint(num << 3 | 2) + varint(len(payload)) + payload

    def num(field, value):
        return varint(field << 3) + varint(value)

    def value_info(name, shape):
        dims = b"".join(msg(1, num(1, d)) for d in shape)
        return msg(1, name) + msg(2, msg(1, num(1, 1) + msg(2, dims)))  # elem_type 1 = float

    node = msg(1, "a") + msg(1, "b") + msg(2, "y") + msg(3, "mm") + msg(4, "MatMul")
    graph = (msg(1, node) + msg(2, "one_op") + msg(11, value_info("a", [4, 64])) + msg(11, value_info("b", [64, 8]))
             + msg(12, value_info("y", [4, 8])))
    return num(1, 8) + msg(7, graph) + msg(8, num(2, 17))  # ir_version 8, opset 17


CHECKS = {
    "onnx": r"""
import json, sys, numpy as np, onnxruntime as ort, onnxruntime_genai
rng = np.random.default_rng(0)
a, b = rng.standard_normal((4, 64), dtype=np.float32), rng.standard_normal((64, 8), dtype=np.float32)
y = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).run(None, {"a": a, "b": b})[0]
assert np.allclose(y, a @ b, rtol=1e-4, atol=1e-4), float(abs(y - a @ b).max())
print(json.dumps({"onnxruntime": ort.__version__, "onnxruntime_genai": onnxruntime_genai.__version__,
                  "max_abs_err": float(abs(y - a @ b).max())}))
""",
    "executorch": r"""
import json, time
t = time.time()
import torch, executorch.runtime
import executorch.kernels.quantized
import executorch.extension.llm.custom_ops.custom_ops
from executorch.extension.llm.runner import TextLLMRunner
seconds = time.time() - t
x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
assert float((x @ x.T).sum()) == 1134.0
runtime = executorch.runtime.Runtime.get()
print(json.dumps({"torch": torch.__version__, "import_seconds": round(seconds, 1),
                  "operators": len(runtime.operator_registry.operator_names),
                  "backends": sorted(runtime.backend_registry.registered_backend_names)}))
""",
    "gguf": r"""
import json, llama_cpp
llama_cpp.llama_backend_init()
print(json.dumps({"llama_cpp": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode().strip()}))
""",
}


def verify_part(dest, part, cpu, log):
    """Import the part's runtime in the guest and run something small; returns the check's JSON."""
    argv, env = python_command(dest, cpu)
    args = ["-c", CHECKS[part]]
    (dest / "checks").mkdir(exist_ok=True)
    if part == "onnx":
        model = dest / "checks" / "matmul.onnx"
        model.write_bytes(onnx_matmul_model())
        args.append(str(model))
    started = time.time()
    # cwd: where qemu would drop a core file if the guest crashes and core dumps are on
    proc = subprocess.run(argv + args, capture_output=True, text=True, env=env, cwd=str(dest / "checks"))
    with open(log, "a") as out:
        out.write("\n$ verify %s on %s (%.1f s)\n%s%s" % (part, cpu, time.time() - started, proc.stdout, proc.stderr))
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise Fail("%s runtime failed under emulation on %s: %s (log: %s)" % (part, cpu, tail, log),
                   "see the log; a re-run repeats only this check, `rm %s` rebuilds the part"
                   % (dest / ".stamps" / (part + ".json")))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["seconds"] = round(time.time() - started, 1)
    loaded = re.findall(r"loaded CPU backend from \S*libggml-cpu-(\S+?)\.so", proc.stderr)
    if loaded:
        result["ggml_variant"] = loaded[-1]
    return result


def part_cpus(part, cpus):
    """(CPUs the part can run on, {CPU: why not} for the others)."""
    need = PART_NEEDS.get(part)
    ok = [c for c in cpus if not need or need[0] in cpus[c]["features"]]
    return ok, {c: "lacks '%s': %s" % need for c in cpus if c not in ok}


def verify(dest, part, cpus, log, all_cpus):
    """Run the part's check on each CPU it supports (executorch: one CPU unless asked, 20-70 s each)."""
    ok, _ = part_cpus(part, cpus)
    if not ok:
        raise Fail("no prepared CPU can run %s (%s)" % (part, PART_NEEDS[part][1]), "add one with --cpus, e.g. cortex-a76")
    names = ok if (all_cpus or part != "executorch") else [DEFAULT_CPU if DEFAULT_CPU in ok else ok[0]]
    results = {}
    for cpu in names:
        results[cpu] = verify_part(dest, part, cpu, log)
        extra = results[cpu].get("ggml_variant") or results[cpu].get("import_seconds")
        say("[%s] verified on %s (%.1f s%s)" % (part, cpu, results[cpu]["seconds"], ", %s" % extra if extra else ""))
    return results


# -------------------------------------------------------------------------------------------- the steps

def step_root(dest, log):
    """Stamped: the arm64 root (re-downloaded only when the wanted packages or the codename change)."""
    key = stamp_key("root", ROOT_DEBS, debian_codename())
    info = stamp_read(dest, "root", key)
    if info is None or not (dest / "root" / "usr" / "bin" / ("python" + PY_TAG)).exists():
        stamp_drop(dest, "root")
        stamp_drop(dest, "cpus")
        say("arm64 root: Debian %s python%s + runtime libraries (private APT, dpkg -x)" % (debian_codename(), PY_TAG))
        started = time.time()
        info = build_root(dest, log)
        info["seconds"] = round(time.time() - started, 1)
        stamp_write(dest, "root", key, info)
        say("arm64 root: %d packages, %s downloaded, %.0f s" % (info["debs"], mb(info["download_bytes"]), info["seconds"]))
    return info


def step_cpus(qemu, version, models, dest, wanted, log):
    """Stamped: one -L prefix per CPU; probed again when qemu, the CPU list or the host CPU count change."""
    key = stamp_key("cpus", version, sorted(wanted), host_cpu_count(), CPU_TABLE)
    info = stamp_read(dest, "cpus", key)
    if info is None or not all(Path(c["prefix"], "proc", "cpuinfo").exists() for c in info.values()):
        stamp_drop(dest, "cpus")
        shutil.rmtree(str(dest / "cpus"), ignore_errors=True)
        info = build_cpus(qemu, models, dest, wanted, log)
        stamp_write(dest, "cpus", key, info)
    return info


def part_key(part, dest, pins, variants):
    """What a part is built from: its pins (executorch: all, they constrain torch's tree); gguf also its
    variants and DEST's path (compiled into libggml as the backend folder)."""
    names = sorted(set(PART_WHEELS[part] + (["torch"] if part == "executorch" else [])
                       + (["llama-cpp-python"] if part == "gguf" else [])))
    if part == "executorch":
        return stamp_key(part, pins)
    if part == "gguf":
        return stamp_key(part, {n: pins[n] for n in names}, list(variants), str(dest))
    return stamp_key(part, {n: pins[n] for n in names})


def step_part(part, dest, pins, pins_from, variants, args, log):
    """Stamped: one part's wheels (and for gguf the llama.cpp build) in DEST/site."""
    key = part_key(part, dest, pins, variants)
    info = stamp_read(dest, part, key)
    if info is not None:
        return info, key, False
    stamp_drop(dest, part)
    started = time.time()
    pip = pip_command(log)
    work = dest / "downloads" / part
    say("[%s] downloading aarch64 wheels (pins from %s)" % (part, pins_from))
    wheels, download_bytes, skipped = download_wheels(pip, part, pins, work / "wheels", log)
    say("[%s] %d wheels, %s; installing into %s" % (part, len(wheels), mb(download_bytes), dest / "site"))
    install_wheels(pip, wheels, dest / "site", log)
    info = {"packages": wheel_versions(wheels), "pins_from": pins_from, "download_bytes": download_bytes}
    if skipped:
        info["skipped_torch_deps"] = skipped
    if part == "gguf":
        info.update(build_gguf(pip, dest, pins, variants, work, log))
        info["download_bytes"] += info.pop("sdist_bytes")
        info["packages"]["llama-cpp-python"] = pins["llama-cpp-python"]
    if not args.keep_downloads:
        shutil.rmtree(str(work), ignore_errors=True)
        try:
            work.parent.rmdir()
        except OSError:
            pass
    info["build_seconds"] = round(time.time() - started, 1)
    stamp_write(dest, part, key, info)  # built; verified below (a failed check re-runs only the check)
    return info, key, True


def write_env_json(dest, qemu, qemu_version, root_info, cpus, parts):
    """DEST/env.json, written atomically (readers never see half a file)."""
    python = dest / "root" / "usr" / "bin" / ("python" + PY_TAG)
    version = re.match(r"([\d.]+)", root_info.get("debian_python", ""))
    info = {
        "schema": 1, "dest": str(dest), "qemu": qemu, "qemu_version": qemu_version,
        "root": str(dest / "root"), "site": str(dest / "site"), "python": str(python),
        "python_version": version.group(1) if version else PY_TAG,
        "debian_python": root_info.get("debian_python"),
        "env": {"PYTHONPATH": str(dest / "site"), "PYTHONNOUSERSITE": "1"},
        "unset": list(UNSET_VARS),
        "default_cpu": DEFAULT_CPU if DEFAULT_CPU in cpus else sorted(cpus)[0],
        "cpus": cpus, "parts": parts, "disk_bytes": du(dest),
    }
    tmp = dest / "env.json.tmp"
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    tmp.replace(dest / "env.json")
    return info


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=str(REPO / ".venv" / "arm64"), help="where to build (default .venv/arm64)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma list of %s" % ", ".join(PARTS))
    parser.add_argument("--cpus", default=",".join(c[0] for c in CPU_TABLE),
                        help="emulated CPUs to prepare (those this qemu lacks are skipped)")
    parser.add_argument("--venv", default=str(REPO / ".venv"), help="x86 virtualenv whose versions to pin to")
    parser.add_argument("--ggml-variants", default=",".join(GGML_VARIANTS), help="llama.cpp CPU variants to build")
    parser.add_argument("--verify", action="store_true", help="re-run every check, executorch's on every CPU too")
    parser.add_argument("--keep-downloads", action="store_true", help="keep wheels, sdist and build tree")
    parser.add_argument("--print-command", metavar="CPU", help="print the shell command for CPU and exit")
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in args.parts if p not in PARTS]
    if bad:
        parser.error("unknown part(s) %s; choose from %s" % (", ".join(bad), ", ".join(PARTS)))
    return args


def main(argv=None):
    args = parse_args(argv)
    dest = Path(args.dest).resolve()
    if args.print_command:
        if not (dest / "env.json").exists():
            print("arm64_env: ERROR: no %s. Fix: build it first: python3 %s --dest %s" % (dest / "env.json", __file__, dest),
                  file=sys.stderr)
            return 2
        print(shell_command(dest, args.print_command))
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    log = dest / "logs" / "build.log"
    log.parent.mkdir(exist_ok=True)
    started = time.time()
    try:
        qemu, qemu_version, models = qemu_facts(log)
        root_info = step_root(dest, log)
        cpus = step_cpus(qemu, qemu_version, models, dest, [c for c in args.cpus.split(",") if c], log)
        pins, pins_from = resolve_pins(args.venv)
        variants = [v for v in args.ggml_variants.split(",") if v]
        parts = {}  # parts built earlier and still current stay in env.json
        for part in PARTS:
            earlier = stamp_read(dest, part, part_key(part, dest, pins, variants))
            if earlier is not None and part not in args.parts:
                parts[part] = earlier
        for part in args.parts:
            info, key, built = step_part(part, dest, pins, pins_from, variants, args, log)
            info["cpus"], info["unsupported_cpus"] = part_cpus(part, cpus)
            parts[part] = info
            write_env_json(dest, qemu, qemu_version, root_info, cpus, parts)  # the checks read it
            if built or args.verify or "verified" not in info:
                info["verified"] = verify(dest, part, cpus, log, args.verify)
                stamp_write(dest, part, key, info)
            else:
                say("[%s] up to date (%s)" % (part, ", ".join("%s %s" % (n, v) for n, v in sorted(info["packages"].items())
                                                            if n in ("onnxruntime", "executorch", "llama-cpp-python"))))
        info = write_env_json(dest, qemu, qemu_version, root_info, cpus, parts)
    except Fail as err:
        print("arm64_env: ERROR: %s. Fix: %s" % (err.problem, err.fix), file=sys.stderr, flush=True)
        return 2
    say("done in %.0f s; %s on disk; env: %s" % (time.time() - started, mb(info["disk_bytes"]), dest / "env.json"))
    say("run: " + shell_command(dest, info["default_cpu"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
