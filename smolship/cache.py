"""The results cache: what depends only on a model and its settings (the reference's logits and greedy
tokens over the eval documents, calibration statistics) is computed once and reused by every recipe,
target and later run of that model.

An entry is a folder `<store>/<kind>/<key digest>/` of `.npy` arrays plus `entry.json` (the key's parts,
each array's file, shape, dtype, bytes and sha256). Arrays are stored exactly as computed (float32 logits
stay float32: a cached figure must never differ from a fresh one). Entries are written into a hidden
sibling and renamed into place; one whose files disagree with entry.json is deleted and recomputed.
Reading an entry refreshes its mtime; beyond the size bound the least recently used entries go.

Where (environment, read on every call so spawned workers inherit it):
- `SMOLSHIP_CACHE`: smolship's cache root (default `$XDG_CACHE_HOME/smolship`, else `~/.cache/smolship`);
  the store is its `results/` folder.
- `SMOLSHIP_RESULTS_CACHE`: another store folder (the CLI's `--no-cache` points it at a temporary folder
  for one run, so the run still shares within itself), or `off`: a private temporary folder per process.
- `SMOLSHIP_CACHE_MAX_GB`: the size bound (default 4).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from smolship.exporter.sources import sha256_file

ENTRY = "entry.json"
DEFAULT_MAX_GB = 4.0
FORMAT = 1  # entry layout version: part of every key
STALE_SECONDS = 3600  # a hidden partial entry older than this was left by a killed writer
_stores: dict[tuple[str, int], "Store"] = {}
_usage: dict[str, Counter] = {}


def cache_root() -> Path:
    """smolship's cache folder (offgrid models, the results store)."""
    if os.environ.get("SMOLSHIP_CACHE"):
        return Path(os.environ["SMOLSHIP_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "smolship"


def max_bytes() -> int:
    try:
        gb = float(os.environ.get("SMOLSHIP_CACHE_MAX_GB", DEFAULT_MAX_GB))
    except ValueError:
        gb = DEFAULT_MAX_GB
    return int(max(gb, 0.0) * 1e9)


def results_store() -> "Store":
    """The store in force for this process (see the module docstring)."""
    where = os.environ.get("SMOLSHIP_RESULTS_CACHE", "")
    if where == "off":
        folder = _private_folder()
    else:
        folder = Path(where).expanduser() if where else cache_root() / "results"
    key = (str(folder), max_bytes())
    if key not in _stores:
        _stores[key] = Store(folder, key[1])
    return _stores[key]


_private: list[Path] = []


def _private_folder() -> Path:
    if not _private:
        _private.append(Path(tempfile.mkdtemp(prefix="smolship-results-")))
        atexit.register(shutil.rmtree, _private[0], True)
    return _private[0]


@contextlib.contextmanager
def run_store(use_cache: bool) -> Iterator[None]:
    """For one CLI command: with `use_cache` False, the command (and the workers it spawns) share a
    temporary store that is removed afterwards; nothing is read from or left in the persistent one."""
    if use_cache:
        yield
        return
    before = os.environ.get("SMOLSHIP_RESULTS_CACHE")
    folder = tempfile.mkdtemp(prefix="smolship-run-cache-")
    os.environ["SMOLSHIP_RESULTS_CACHE"] = folder
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SMOLSHIP_RESULTS_CACHE", None)
        else:
            os.environ["SMOLSHIP_RESULTS_CACHE"] = before
        shutil.rmtree(folder, ignore_errors=True)


def key_digest(kind: str, key: dict) -> str:
    return hashlib.sha256(json.dumps({"kind": kind, "format": FORMAT, **key}, sort_keys=True).encode()).hexdigest()


def note(label: str, reused: bool) -> None:
    """Count one lookup of `label` ("reference logits", "calibration statistics") in this process."""
    _usage.setdefault(label, Counter())["cached" if reused else "computed"] += 1


def usage() -> dict[str, Counter]:
    """Lookups so far in this process, per label (a copy: diff two of them around a piece of work)."""
    return {k: Counter(v) for k, v in _usage.items()}


def usage_since(before: dict[str, Counter]) -> dict[str, str]:
    """{label: "cached" | "computed" | "k of n cached"} for the lookups made since `before = usage()`."""
    out = {}
    for label, now in _usage.items():
        d = now - before.get(label, Counter())
        cached, total = d["cached"], d["cached"] + d["computed"]
        if total:
            out[label] = "cached" if cached == total else "computed" if not cached else f"{cached} of {total} cached"
    return out


class Store:
    """A folder of entries with a size bound (module docstring)."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = Path(folder), limit

    def _entry(self, kind: str, digest: str) -> Path:
        return self.folder / kind / digest

    def get(self, kind: str, key: dict, mmap: bool = False) -> dict[str, np.ndarray] | None:
        """The entry's arrays, or None (missing, or corrupt: then it is deleted). `mmap`: read-only views."""
        entry = self._entry(kind, key_digest(kind, key))
        try:
            meta = json.loads((entry / ENTRY).read_text())
            arrays = {}
            for name, f in meta["arrays"].items():
                path = entry / f["file"]
                if path.stat().st_size != f["bytes"] or sha256_file(path) != f["sha256"]:
                    raise ValueError(f"{path} does not match its entry.json")
                arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
                if list(arr.shape) != f["shape"] or str(arr.dtype) != f["dtype"]:
                    raise ValueError(f"{path}: shape or dtype differs from its entry.json")
                arrays[name] = arr
            os.utime(entry / ENTRY)  # least recently used goes first
            return arrays
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - truncated, bit-flipped or unparsable: recompute it
            shutil.rmtree(entry, ignore_errors=True)
            return None

    def put(self, kind: str, key: dict, arrays: dict[str, np.ndarray]) -> bool:
        """Store `arrays` atomically; False when they alone exceed the bound (nothing stored)."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        if sum(a.nbytes for a in arrays.values()) > self.limit:
            return False
        digest = key_digest(kind, key)
        final = self._entry(kind, digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=final.parent))
        try:
            files = {}
            for i, (name, arr) in enumerate(arrays.items()):
                path = tmp / f"{i}.npy"
                np.save(path, arr, allow_pickle=False)
                files[name] = {"file": path.name, "shape": list(arr.shape), "dtype": str(arr.dtype),
                               "bytes": path.stat().st_size, "sha256": sha256_file(path)}
            (tmp / ENTRY).write_text(json.dumps({"kind": kind, "key": key, "arrays": files,
                                                 "created": time.time()}, indent=1, default=str))
            tmp.chmod(0o755)
            if final.exists():  # a corrupt one (get deleted it) or a concurrent writer's: replace
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:  # another process renamed the same entry in first: keep theirs
                return True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.evict()
        return True

    def lock(self, kind: str, key: dict):
        """An inter-process lock per entry: parallel workers compute one entry once."""
        from filelock import FileLock

        locks = self.folder / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{key_digest(kind, key)}.lock"))

    def cached(self, kind: str, key: dict, compute: Callable[[], dict[str, np.ndarray]], label: str,
               mmap: bool = False) -> dict[str, np.ndarray]:
        """The entry's arrays, computed (once across processes, under the entry's lock) when missing. A cache
        folder that cannot be written (read-only home, full disk) costs the reuse, never the computation."""
        got = self.get(kind, key, mmap)
        if got is not None:
            note(label, True)
            return got
        try:
            lock = self.lock(kind, key)
            lock.acquire()
        except OSError:
            lock = None
        try:
            got = self.get(kind, key, mmap) if lock else None  # another worker may have computed it meanwhile
            if got is not None:
                note(label, True)
                return got
            note(label, False)
            got = compute()
            if lock:
                try:
                    self.put(kind, key, got)
                except OSError:
                    pass
            return got
        finally:
            if lock:
                lock.release()

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, folder) of every complete entry."""
        out = []
        for meta in self.folder.glob(f"*/*/{ENTRY}"):
            if meta.parent.name.startswith("."):  # being written (or left by a killed writer: evict removes it)
                continue
            try:
                info = json.loads(meta.read_text())
                out.append((meta.stat().st_mtime, sum(f["bytes"] for f in info["arrays"].values()), meta.parent))
            except (OSError, ValueError, KeyError):
                continue
        return out

    def size_bytes(self) -> int:
        return sum(b for _, b, _ in self.entries())

    def evict(self) -> list[Path]:
        """Delete least recently used entries until the store fits its bound; returns what went."""
        gone = []
        for partial in self.folder.glob("*/.*"):  # a writer killed mid-entry: gone after an hour
            with contextlib.suppress(OSError):
                if partial.is_dir() and time.time() - partial.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(partial, ignore_errors=True)
                    gone.append(partial)
        entries = sorted(self.entries())
        total = sum(b for _, b, _ in entries)
        for _, size, folder in entries:
            if total <= self.limit:
                break
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            gone.append(folder)
        return gone
