"""Bundle = one folder per (target, recipe): model files, tokenizer, chat template, generation config,
and a versioned manifest.json listing every file with its sha256 plus the measured validation results.

Bundles are written atomically: everything goes into a hidden temporary sibling folder that is renamed
into place only after the artifact, tokenizer files, manifest and validation are complete. A lock file
per bundle (`OUT/.<name>.lock`, fcntl through `filelock`) keeps two exports of one bundle apart; each
partial folder records its owner (host, pid, process start time) so the next export into OUT removes
the debris of a killed one; the published folder gets the permissions of the umask, like `mkdir`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import platform
import shutil
import socket
import tempfile
from pathlib import Path

from smolship import __version__
from smolship.errors import SmolshipError
from smolship.exporter.sources import sha256_file

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
OWNER = ".smolship-owner.json"  # inside a partial folder: who is writing it (never part of a bundle)
log = logging.getLogger("smolship")


def check_output_folder(out: Path) -> None:
    """Fail early, before any work, when the output folder cannot be written."""
    out = Path(out)
    probe_dir = out
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir() or not os.access(probe_dir, os.W_OK | os.X_OK):
        raise SmolshipError(f"The output folder '{out}' cannot be written (no write permission on '{probe_dir}').",
                            "Choose another --out folder or fix its permissions.")


def _umask() -> int:
    try:  # Linux reports it without changing it (os.umask would, for a moment, in every thread)
        for line in open("/proc/self/status"):
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _follow_umask(folder: Path) -> None:
    """Give the bundle the permissions `mkdir` / `open` would: mkdtemp made its root 0700, and libraries
    write through private temp files (coremltools leaves an .mlpackage's files 0600)."""
    mask = _umask()
    for p in [folder, *folder.rglob("*")]:
        if p.is_symlink():
            continue
        if p.is_dir():
            p.chmod(0o777 & ~mask)
        else:
            p.chmod((0o777 if p.stat().st_mode & 0o100 else 0o666) & ~mask)


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _owner_alive(owner: dict) -> bool | None:
    """True/False for a partial folder written on this host; None when that cannot be known."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return None
    started, recorded = _process_start(owner["pid"]), owner.get("started")
    if started is None:
        return False
    # a live pid with another start time is a reused pid: the writer itself is gone
    return not isinstance(recorded, (int, float)) or abs(started - recorded) < 1.0


def stale_partials(out: Path) -> tuple[list[Path], list[Path]]:
    """(dead, unknown) partial folders under `out`: dead ones were left by a process of this host that
    no longer runs; unknown ones have no owner record, or another host's, and are only reported."""
    dead, unknown = [], []
    if not Path(out).is_dir():
        return dead, unknown
    for p in sorted(Path(out).iterdir()):
        if not (p.name.startswith(".") and p.is_dir() and (".partial-" in p.name or ".old-" in p.name)):
            continue
        try:
            owner = json.loads((p / OWNER).read_text())
        except (OSError, ValueError):
            owner = {}
        alive = _owner_alive(owner) if isinstance(owner, dict) else None
        if alive is False:
            dead.append(p)
        elif alive is None:
            unknown.append(p)
    return dead, unknown


def sweep_partials(out: Path) -> list[Path]:
    """Remove partial folders of dead exports of this host; warn about those we cannot vouch for."""
    dead, unknown = stale_partials(out)
    for p in dead:
        shutil.rmtree(p, ignore_errors=True)
        log.warning("Removed %s, left by an export that was killed.", p)
    if unknown:
        log.warning("Partial bundle folders of unknown owner (another host, or an older smolship): %s. "
                    "If no export is writing them, remove them with: rm -rf %s",
                    ", ".join(map(str, unknown)), " ".join(f"'{p}'" for p in unknown))
    return dead


def _write_owner(folder: Path) -> None:
    pid = os.getpid()
    (folder / OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                            "started": _process_start(pid)}))


@contextlib.contextmanager
def bundle_lock(final: Path):
    """Hold OUT/.<name>.lock while `final` is written; a second writer fails at once, naming the first."""
    from filelock import FileLock, Timeout

    final = Path(final)
    path = final.with_name(f".{final.name}.lock")
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        writers = [p for p in final.parent.glob(f".{final.name}.partial-*") if (p / OWNER).is_file()]
        who = "; ".join((p / OWNER).read_text() for p in writers[:2]) or "unknown process"
        raise SmolshipError(f"Another smolship export is writing '{final}' right now ({who}).",
                            "Wait for it to finish, or export into another --out folder.") from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: filelock re-checks the inode of a late waiter
        lock.release()


@contextlib.contextmanager
def atomic_bundle(final: Path, force: bool = False):
    """Yield a temporary folder; on success rename it to `final`, on any failure delete it.

    The bundle's lock is held throughout; debris of killed exports in the same folder is swept first."""
    final = Path(final)
    check_output_folder(final.parent)
    final.parent.mkdir(parents=True, exist_ok=True)
    with bundle_lock(final):
        if final.exists() and (not final.is_dir() or any(final.iterdir())):
            if not force:
                raise SmolshipError(f"The bundle folder '{final}' already exists and is not empty.",
                                    "Pass --force to replace it, or choose another --out folder.")
        sweep_partials(final.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
        try:
            _write_owner(tmp)
            yield tmp
            (tmp / OWNER).unlink(missing_ok=True)
            _follow_umask(tmp)
            if final.exists():
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def file_table(folder: Path) -> dict[str, dict]:
    """Every file in the bundle except the manifest, with size and sha256 (sub-folders included)."""
    table = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, OWNER):
            rel = p.relative_to(folder).as_posix()
            table[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return table


def model_size_mb(manifest: dict) -> float:
    """Size of the model files (tokenizer and config files excluded)."""
    names = set(manifest.get("model_files", []))
    total = sum(f["bytes"] for rel, f in manifest["files"].items() if rel.split("/")[0] in names)
    return round(total / 1e6, 2)


def new_manifest(source_model, target: str, recipe, runtime_versions: dict, model_files: list[str],
                 target_info: dict, max_seq_len: int) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "smolship_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"name": source_model.name, **source_model.source},
        "config": source_model.config.to_dict(),
        "target": target,
        "quant": {"recipe": recipe.name, "precision": recipe.precision.value, "description": recipe.description},
        "max_seq_len": max_seq_len,
        "runtime_versions": runtime_versions,
        "host": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()},
        "tokenizer": {
            "bos_id": source_model.tokenizer.bos_id,
            "eos_id": source_model.tokenizer.eos_id,
            "stop_ids": source_model.tokenizer.stop_ids,
            "add_bos": source_model.tokenizer.add_bos,
            "has_chat_template": bool(source_model.tokenizer.chat_template),
        },
        "model_files": model_files,
        "target_info": target_info,
        "files": {},
        "validation": None,
    }


def write_manifest(folder: Path, manifest: dict) -> dict:
    manifest["files"] = file_table(folder)
    manifest["size_mb"] = model_size_mb(manifest)
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(bundle: Path) -> dict:
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise SmolshipError(f"'{bundle}' is not a smolship bundle (no {MANIFEST}).",
                            "Pass a folder written by `smolship export`, e.g. out/gguf-q8_0.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SmolshipError(f"{path} is not valid JSON ({e}).", "Re-export the bundle.") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise SmolshipError(f"{path} has schema version {manifest.get('schema_version')}, this smolship reads {SCHEMA_VERSION}.",
                            "Re-export the bundle with this smolship version.")
    return manifest


def verify_files(bundle: Path, manifest: dict) -> list[str]:
    """Names of files whose sha256 no longer matches the manifest (or that are missing)."""
    bad = []
    for rel, info in manifest["files"].items():
        p = Path(bundle) / rel
        if not p.is_file() or sha256_file(p) != info["sha256"]:
            bad.append(rel)
    return bad


def verify_bundle(bundle: Path, manifest: dict | None = None) -> dict:
    """Read the manifest and check every file's sha256 against it before anything loads the bundle."""
    manifest = manifest or read_manifest(bundle)
    bad = verify_files(bundle, manifest)
    if bad:
        raise SmolshipError(f"Bundle '{bundle}' was modified after export: {', '.join(bad[:5])}"
                            f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''} no longer match manifest.json.",
                            "Re-export the bundle (never edit files inside it), or pass --no-verify to load it anyway.")
    return manifest
