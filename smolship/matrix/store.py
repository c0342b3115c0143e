"""Where the matrix's bundles land: a folder every worker reaches (local disk, NFS), or an fsspec URL
(`s3://bucket/release`, `gs://...`, with that protocol's fsspec package installed).

A folder gets bundle.atomic_bundle's rename. Object stores have no rename, so a bundle is built in a
local staging folder on the worker and copied up with every file first and manifest.json last: a
reader that finds the manifest finds a complete bundle, and a copy cut short leaves no manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from smolship.bundle import MANIFEST
from smolship.errors import SmolshipError


def is_url(out: str) -> bool:
    return "://" in str(out)


def _fs(url: str):
    import fsspec  # installed with huggingface_hub

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise SmolshipError(f"Cannot open the output URL '{url}' ({e}).",
                            "Install the fsspec package for its protocol (s3fs for s3://, gcsfs for gs://), or use a shared folder.") from None


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def exists(url: str) -> bool:
    fs, path = _fs(url)
    return fs.exists(path)


def publish(bundle: Path, url: str) -> None:
    """Copy a finished local bundle folder to `url` (the bundle's final location), manifest last."""
    fs, dest = _fs(url)
    if fs.exists(dest):
        fs.rm(dest, recursive=True)  # replacing (--force was checked before any job started)
    files = sorted(p for p in Path(bundle).rglob("*") if p.is_file() and p.name != MANIFEST)
    for p in files + [Path(bundle) / MANIFEST]:
        target = f"{dest}/{p.relative_to(bundle).as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(p), target)
    shutil.rmtree(bundle, ignore_errors=True)


def write_text(url: str, text: str) -> None:
    fs, path = _fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(text)
