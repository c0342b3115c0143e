"""Byte-reproducible Core ML packages (issue 17): two things made two exports of one recipe differ.

- coremltools names ops from a process-wide counter (`Builder.name_count`: `coreml_update_state_4`
  in one export, `coreml_update_state_8` in the next one of the same process), so the counter is reset
  before each conversion and compression;
- an .mlpackage's Manifest.json keys its items by fresh random UUIDs (libmodelpackage), so they are
  replaced by UUIDs derived from each item's path (the keys are opaque: Core ML only follows them);
- protobuf writes map fields (op attributes, metadata) in hash order, which Python randomizes per
  process (PYTHONHASHSEED), so model.mlmodel is rewritten with deterministic serialization.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path


def reset_op_names() -> None:
    from coremltools.converters.mil.mil import Builder

    Builder.name_count.clear()


def pin_package(package: Path) -> None:
    """Deterministic model.mlmodel bytes and Manifest.json keys for a saved .mlpackage."""
    from coremltools.proto import Model_pb2

    spec_path = Path(package) / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))
    pin_manifest(package)


def pin_manifest(package: Path) -> None:
    path = Path(package) / "Manifest.json"
    manifest = json.loads(path.read_text())
    renamed = {key: str(uuid.uuid5(uuid.NAMESPACE_URL, f"smolship:{info['path']}"))
               for key, info in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {renamed[k]: v for k, v in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    path.write_text(json.dumps(manifest, indent=4, sort_keys=True))
