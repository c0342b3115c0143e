"""The release matrix on Ray: a local Ray instance started here (no cluster), the same spec as the local
run in test_matrix.py, a job whose worker dies mid-run and is retried by Ray, progress streamed back to
the driver, output to an fsspec URL, and the same model files (sha256) as the local process pool."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smolship.errors import SmolshipError
from matrix_fixtures import model_hashes

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'smolship[ray]'")


@pytest.fixture(scope="session")
def ray_instance(tmp_path_factory):
    """One local Ray for the session (start-up costs ~10-20 s). The fault file's path is set before
    ray.init so every Ray worker inherits it; a test arms it by writing a job key into it."""
    fault = tmp_path_factory.mktemp("ray-fault") / "fault"
    old = os.environ.get("SMOLSHIP_MATRIX_FAULT")
    os.environ["SMOLSHIP_MATRIX_FAULT"] = str(fault)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False)
    yield fault
    ray.shutdown()
    if old is None:
        os.environ.pop("SMOLSHIP_MATRIX_FAULT", None)
    else:
        os.environ["SMOLSHIP_MATRIX_FAULT"] = old


@pytest.fixture(scope="session")
def ray_matrix(ray_instance, matrix_spec, tmp_path_factory):
    from smolship.matrix import load_spec, run_matrix

    ray_instance.write_text("random-tiny/gguf")  # that job's first worker dies with os._exit
    spec = load_spec(matrix_spec)
    out = tmp_path_factory.mktemp("matrix-ray") / "release"
    spec.out = f"file://{out}"  # an fsspec URL: bundles staged on the worker, copied up manifest last
    events = []
    report = run_matrix(spec, ray=True, on_event=events.append)
    assert not ray_instance.exists() and ray_instance.with_name("fault.fired").exists()
    return report, events, out


def test_ray_retries_the_killed_job_and_streams_progress(ray_matrix):
    report, events, out = ray_matrix
    assert sorted(r["bundle"] for r in report["rows"]) == ["random-tiny/gguf-q8_0", "random-tiny/onnx-fp32",
                                                           "tiny-b/gguf-q8_0", "tiny-b/onnx-fp32"]
    attempts = {j["job"]: j["attempts"] for j in report["jobs"]}
    assert attempts["random-tiny/gguf"] == 2 and attempts["tiny-b/onnx"] == 1  # Ray re-ran the dead worker's task
    assert {f["job"] for f in report["failures"]} == {"broken/gguf", "broken/onnx"}  # errors are reported, not retried
    assert attempts["broken/gguf"] == 1
    kinds = {(e["job"], e["kind"]) for e in events}
    for job in ("random-tiny/gguf", "random-tiny/onnx", "tiny-b/gguf", "tiny-b/onnx"):
        assert {(job, "start"), (job, "progress"), (job, "done")} <= kinds  # streamed from the workers
    assert len({e["pid"] for e in events if e["kind"] == "start"}) == 7  # a fresh worker process per attempt
    assert report["backend"].startswith("ray") and len(report["gate"]) == 4
    md = (out / "report.md").read_text()
    assert "## random-tiny" in md and "## tiny-b" in md and "broken/onnx" in md
    assert all(r["path"] == f"file://{out}/{r['bundle']}" for r in report["rows"])
    assert sorted(p.name for p in (out / "tiny-b").iterdir()) == ["export-gguf.log", "export-onnx.log", "gguf-q8_0",
                                                                 "onnx-fp32"]  # nothing half-copied or staged


def test_same_spec_gives_the_same_bundles_locally_and_on_ray(ray_matrix, local_matrix):
    ray_hashes, local_hashes = model_hashes(ray_matrix[0]), model_hashes(local_matrix["report"])
    assert len(ray_hashes) >= 4 and ray_hashes == local_hashes
    ray_rows = {r["bundle"]: r for r in ray_matrix[0]["rows"]}
    for row in local_matrix["report"]["rows"]:  # same bundles, same measured parity
        assert ray_rows[row["bundle"]]["kld_mean"] == pytest.approx(row["kld_mean"], rel=1e-6)


def test_a_job_no_node_can_hold_fails_before_submitting(ray_instance, matrix_spec, tmp_path):
    from smolship.matrix import load_spec, run_matrix

    spec = load_spec(matrix_spec)
    spec.out, spec.memory_gb = str(tmp_path / "release"), 10_000.0
    with pytest.raises(SmolshipError) as e:
        run_matrix(spec, ray=True)
    assert "10000.0 GB" in e.value.problem and "ray start --memory" in e.value.fix
    assert not any(Path(spec.out).glob("*/*/manifest.json"))
