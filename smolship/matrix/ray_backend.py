"""Run matrix jobs as Ray tasks: locally (`--ray`) or on a cluster (`--ray ADDRESS`).

Each (model, target) job is one task that asks for what it uses: `num_cpus` = the validation threads,
`memory` = the estimate from the model's config (so two 1.7B jobs never share a 24 GB node), in a
fresh worker process (`max_calls=1`: no runtime state carried between jobs, like the local pool). A
task whose worker dies (node lost, OOM kill) is re-run by Ray up to `max_retries` times; an error
raised inside a job is not retried, it is reported (a bad recipe fails the same way twice).
Progress events go to a small actor without waiting for it: a task blocked in ray.get lends its CPUs
back to the scheduler, which then starts another job beside it (measured: more jobs than CPUs ran).
Every node needs the same smolship install and a path to the spec's `out` folder (shared storage).
"""

from __future__ import annotations

from typing import Callable

from smolship.errors import MissingDependencyError, SmolshipError
from smolship.export_matrix import TargetOutcome
from smolship.matrix.jobs import MatrixJob, finished_event, run_matrix_job


class EventSink:
    """Collects the jobs' events until the driver drains them (an actor with no CPU)."""

    def __init__(self):
        self.events: list[dict] = []

    def put(self, event: dict) -> None:
        self.events.append(event)

    def drain(self) -> list[dict]:
        out, self.events = self.events, []
        return out


def _task(mjob: MatrixJob, sink) -> TargetOutcome:
    from smolship.logs import quiet_library_logs

    quiet_library_logs()
    return run_matrix_job(mjob, lambda event: sink.put.remote(event))  # fire and forget: never block the job


def _check_fits(ray, mjobs: list[MatrixJob]) -> None:
    """Fail before submitting when no node could ever run a job (Ray would wait for one forever)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for m in mjobs:
        if not any(r.get("CPU", 0) >= m.cpus and r.get("memory", 0) >= m.memory_mb * 1e6 for r in nodes):
            biggest = max((r.get("memory", 0) / 1e9 for r in nodes), default=0)
            raise SmolshipError(
                f"Job {m.key} asks for {m.cpus} CPUs and {m.memory_mb / 1000:.1f} GB, but no Ray node offers that "
                f"(largest memory: {biggest:.1f} GB).",
                "Start nodes with more schedulable memory (ray start --memory=<bytes> --object-store-memory=1000000000), "
                "or set memory_gb / [eval] threads in the spec.")


def run_ray(mjobs: list[MatrixJob], address: str | None = None, max_retries: int = 2,
            on_event: Callable[[dict], None] = lambda e: None) -> list[TargetOutcome]:
    try:
        import ray
    except ImportError as e:
        raise MissingDependencyError("ray", "ray", e) from None

    started = not ray.is_initialized()
    if started:  # address None: an existing local cluster if there is one, else a new local instance
        ray.init(address=address or None, log_to_driver=False, include_dashboard=False, configure_logging=False)
    try:
        _check_fits(ray, mjobs)
        sink = ray.remote(num_cpus=0)(EventSink).remote()
        remote = ray.remote(max_calls=1)(_task)  # a fresh worker process per job
        refs = {}
        for i, m in enumerate(mjobs):
            ref = remote.options(num_cpus=m.cpus, memory=int(m.memory_mb * 1e6), max_retries=max_retries,
                                 retry_exceptions=False, name=f"smolship:{m.key}").remote(m, sink)
            refs[ref] = i
        results: list[TargetOutcome | None] = [None] * len(mjobs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=0.25)
            for event in ray.get(sink.drain.remote()):
                on_event(event)
            for ref in done:
                i = refs[ref]
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayError as e:  # retries spent: the worker or its node kept dying
                    results[i] = TargetOutcome(mjobs[i].job.target, error=f"{mjobs[i].key} failed on Ray: {type(e).__name__}: "
                                               f"{str(e).splitlines()[0][:300]}",
                                               fix="Check the node's memory (the job's estimate is in the report) and Ray's logs.")
                on_event(finished_event(mjobs[i].key, results[i]))
        return results
    finally:
        if started:
            ray.shutdown()

