"""The release matrix: a TOML spec of models x targets x recipes, run as (model, target) jobs on this
machine's process pool or on Ray, with bundles in one shared folder and one report over all of them.

    spec.py         the spec and its expansion's inputs (model names, memory estimate)
    jobs.py         one job = one (model, target), the same body on every backend
    local.py        process per job, retried when the process dies
    ray_backend.py  Ray task per job with CPU and memory requests, retried by Ray
    store.py        a shared folder or an fsspec URL (files first, manifest last)
    report.py       report.{json,md,html}: cross-model table, per-model sections, gate, failures
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from smolship.matrix.spec import MatrixSpec, load_spec, parse_spec

__all__ = ["MatrixSpec", "load_spec", "parse_spec", "run_matrix"]


def run_matrix(spec: MatrixSpec, *, ray: bool = False, address: str | None = None, jobs: int = 1,
               force: bool = False, on_event: Callable[[dict], None] | None = None) -> dict:
    """Run every job, write the reports next to the bundles, and return the report dict."""
    from smolship.bundle import check_output_folder
    from smolship.matrix.jobs import expand
    from smolship.matrix.report import matrix_report, write_matrix_reports

    from smolship.matrix import store

    if not store.is_url(spec.out):
        check_output_folder(Path(spec.out))
    mjobs = expand(spec, force)
    info: dict[str, dict] = {}

    def track(event: dict) -> None:  # the driver's view of each job: attempts, node, duration
        job = info.setdefault(event["job"], {"attempts": 0})
        if event["kind"] == "start":
            job.update(attempts=job["attempts"] + 1, host=event.get("host"))
        elif event["kind"] in ("done", "failed"):
            job["seconds"] = event.get("seconds")
        if on_event:
            on_event(event)

    t0 = time.perf_counter()
    if ray:
        from smolship.matrix.ray_backend import run_ray

        outcomes = run_ray(mjobs, address, spec.max_retries, track)
        backend = f"ray ({address or 'local'})"
    else:
        from smolship.matrix.local import run_local

        outcomes = run_local(mjobs, jobs, spec.max_retries, track)
        backend = f"local processes (--jobs {jobs})"
    report = matrix_report(spec, mjobs, outcomes, info, time.perf_counter() - t0, backend)
    write_matrix_reports(spec.out, report)
    return report
