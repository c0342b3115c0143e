"""Bundles are written atomically, hash every file, and refuse to overwrite without --force."""

from __future__ import annotations

import json

import pytest

from smolship.bundle import atomic_bundle, file_table, read_manifest, verify_files, write_manifest
from smolship.errors import SmolshipError


def test_failed_export_leaves_nothing(tmp_path):
    final = tmp_path / "out" / "gguf-q8_0"
    with pytest.raises(RuntimeError):
        with atomic_bundle(final) as tmp:
            (tmp / "model.gguf").write_bytes(b"half written")
            raise RuntimeError("lowering failed")
    assert not final.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary folder left either


def test_success_renames_into_place_and_hashes_every_file(tmp_path):
    final = tmp_path / "onnx-int8"
    with atomic_bundle(final) as tmp:
        (tmp / "model.onnx").write_bytes(b"graph")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"w" * 10)
        manifest = write_manifest(tmp, {"schema_version": 1, "model_files": ["model.onnx", "sub"], "target": "onnx"})
        assert not final.exists()
    assert manifest["size_mb"] == round(15 / 1e6, 2)
    assert set(manifest["files"]) == {"model.onnx", "sub/weights.bin"}
    assert read_manifest(final)["files"] == file_table(final)
    assert verify_files(final, manifest) == []
    (final / "model.onnx").write_bytes(b"tampered")
    assert verify_files(final, manifest) == ["model.onnx"]


def test_existing_bundle_needs_force(tmp_path):
    final = tmp_path / "b"
    final.mkdir()
    (final / "keep.txt").write_text("old")
    with pytest.raises(SmolshipError, match="--force"):
        with atomic_bundle(final):
            pass
    assert (final / "keep.txt").read_text() == "old"
    with atomic_bundle(final, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SmolshipError, match="cannot be written"):
        with atomic_bundle(blocker / "bundle"):
            pass


def test_manifest_schema_is_checked(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(SmolshipError, match="schema version 99"):
        read_manifest(tmp_path)
    with pytest.raises(SmolshipError, match="not a smolship bundle"):
        read_manifest(tmp_path / "nope")
