"""Bundle = one folder per (target, recipe): model files, tokenizer, chat template, generation config,
and a versioned manifest.json listing every file with its sha256 plus the measured validation results.

Bundles are written atomically: everything goes into a hidden temporary sibling folder that is renamed
into place only after the artifact, tokenizer files, manifest and validation are complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

from smolship import __version__
from smolship.errors import SmolshipError
from smolship.exporter.sources import sha256_file

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def check_output_folder(out: Path) -> None:
    """Fail early, before any work, when the output folder cannot be written."""
    out = Path(out)
    probe_dir = out
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir() or not os.access(probe_dir, os.W_OK | os.X_OK):
        raise SmolshipError(f"The output folder '{out}' cannot be written (no write permission on '{probe_dir}').",
                            "Choose another --out folder or fix its permissions.")


@contextlib.contextmanager
def atomic_bundle(final: Path, force: bool = False):
    """Yield a temporary folder; on success rename it to `final`, on any failure delete it."""
    final = Path(final)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        if not force:
            raise SmolshipError(f"The bundle folder '{final}' already exists and is not empty.",
                                "Pass --force to replace it, or choose another --out folder.")
    check_output_folder(final.parent)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
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
        if p.is_file() and p.name != MANIFEST:
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
