"""Content keys for the results cache (smolship/cache.py): what a cached computation read, so a key
matches only where a fresh computation would give the same bits.

A model is keyed by the weights it actually runs, not by the file it came from: a source's state dict can
be edited after loading (tests do; ExecuTorch folds SmoothQuant scales into a built copy before its
statistics are collected). Hashing the 135M's 538 MB of fp32 weights takes ~0.5 s, against ~1 s of
reference prefill per eval document it saves.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import platform
import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# the code a reference forward or a statistics pass runs: the model and its loaders, the collector, the runner
CODE = ("exporter", "quant", "runner.py", "generate.py")


def tokens_digest(sequences) -> str:
    """sha256 of a list of token id sequences."""
    return hashlib.sha256(repr([[int(t) for t in s] for s in sequences]).encode()).hexdigest()


def _plain(value):
    """A module attribute that can change what forward computes (cfg, eps, cache_mode, max_seq_len), as text."""
    if isinstance(value, (bool, int, float, str, type(None), enum.Enum)):
        return repr(value)
    if isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return repr(value)
    if hasattr(value, "__dataclass_fields__"):
        return repr(value)
    return None


def module_digest(model) -> str:
    """sha256 of everything a forward of `model` depends on: every parameter's bytes, every buffer's (an
    all-zero buffer - a fresh KV cache - by shape and dtype only), each submodule's name, class and plain
    attributes, and the source files of those classes."""
    import torch

    h = hashlib.sha256()
    files = set()
    for name, mod in model.named_modules():
        cls = type(mod)
        h.update(f"{name}:{cls.__module__}.{cls.__qualname__}".encode())
        for attr, value in sorted(vars(mod).items()):
            if not attr.startswith("_") and (text := _plain(value)) is not None:
                h.update(f"{attr}={text}".encode())
        with_source = inspect.getsourcefile(cls) if cls.__module__.startswith("smolship") else None
        if with_source:
            files.add(with_source)
    with torch.no_grad():
        for kind, tensors in (("p", model.named_parameters()), ("b", model.named_buffers())):
            for name, t in tensors:
                h.update(f"{kind}:{name}:{t.dtype}:{tuple(t.shape)}".encode())
                if kind == "b" and not bool(t.any()):
                    h.update(b"zeros")
                    continue
                h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    h.update(files_digest(tuple(sorted(files))).encode())
    return h.hexdigest()


@lru_cache(maxsize=None)
def files_digest(files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode())
        h.update(Path(f).read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of smolship's model, loader, statistics and runner code (CODE)."""
    paths = []
    for part in CODE:
        p = PACKAGE / part
        paths += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.relative_to(PACKAGE)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=1)
def machine() -> dict:
    """Where float results come from: the same code can pick other kernels on another CPU or torch build."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"arch": platform.machine(), "cpu": cpu, "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": sys.version.split()[0]}


def base_key() -> dict:
    """The parts every entry's key starts with: smolship's code and the machine's float behaviour."""
    return {"code": code_digest(), **machine()}
