"""One job = one (model, target): every recipe of that target on that model, in one fresh process.

The job body is the same on every backend (the local process pool or a Ray worker); it reports
progress as small event dicts through `emit`, which each backend carries back to the driver.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from smolship.bundle import read_manifest
from smolship.errors import SmolshipError
from smolship.export_matrix import TargetJob, TargetOutcome, run_target_job
from smolship.matrix import store
from smolship.matrix.spec import MatrixSpec, ModelSpec, job_memory_mb

FAULT_ENV = "SMOLSHIP_MATRIX_FAULT"  # tests: a file naming one job key; that job's first attempt dies


@dataclass
class MatrixJob:
    key: str  # "<model name>/<target>", the job's name in events and the report
    model: ModelSpec
    job: TargetJob
    cpus: int
    memory_mb: int
    url: str | None = None  # fsspec URL of the model's folder; None = job.out is the shared folder itself


def expand(spec: MatrixSpec, force: bool = False) -> list[MatrixJob]:
    """(model, target) jobs, with recipes and existing bundles checked before any heavy work."""
    from smolship.export import bundle_name
    from smolship.targets import ExportOptions, get_target, resolve_recipe
    from smolship.validation.latency import LatencySettings
    from smolship.validation.validate import ValidationSettings

    ev = spec.eval
    settings = ValidationSettings(eval_file=Path(ev.file) if ev.file else None, eval_tokens=ev.tokens,
                                  measure_latency=ev.latency, latency=LatencySettings(runs=ev.runs, threads=ev.threads))
    options = ExportOptions(max_seq_len=spec.max_seq_len, keep_embeddings_fp=spec.keep_embeddings_fp)
    recipes = {}
    for t in spec.targets:
        target = get_target(t)
        names = spec.recipes.get(t)
        recipes[t] = [r.name for r in resolve_recipe(target, None)] if not names else \
            [resolve_recipe(target, n)[0].name for n in names]
    jobs = []
    for m in spec.models:
        memory = job_memory_mb(spec, m)
        url = store.join(spec.out, m.name) if store.is_url(spec.out) else None
        out = Path(spec.out) / m.name if url is None else Path("staged-on-the-worker")
        for t in spec.targets:
            if spec.max_kld is None and not force:
                for r in recipes[t]:
                    final = out / bundle_name(t, r)
                    taken = store.exists(store.join(url, final.name)) if url else final.is_dir() and any(final.iterdir())
                    if taken:
                        raise SmolshipError(f"The bundle '{url or out}/{final.name}' already exists.",
                                            "Pass --force to replace it, or set another `out` in the spec.")
            job = TargetJob(m.source, t, recipes[t], out, options, settings, force, spec.max_kld, show_progress=False)
            jobs.append(MatrixJob(f"{m.name}/{t}", m, job, max(1, ev.threads), memory, url))
    return jobs


def _fault_once(key: str) -> None:
    """Die like a lost node (no exception, no cleanup) if a test armed this job; only the first attempt."""
    marker = os.environ.get(FAULT_ENV)
    if not marker or not os.path.isfile(marker):
        return
    try:
        with open(marker) as f:
            armed = f.read().strip()
        if armed == key:
            os.rename(marker, marker + ".fired")  # atomic: one attempt only, even with several workers
            os._exit(17)
    except OSError:
        return


def start_event(key: str, pid: int) -> dict:
    return {"job": key, "kind": "start", "host": socket.gethostname(), "pid": pid}


def run_matrix_job(mjob: MatrixJob, emit: Callable[[dict], None], announce: bool = True) -> TargetOutcome:
    """The job body on any backend: export and validate every recipe, streaming progress through emit.

    announce=False when the backend reports the start itself (the local pool knows its processes)."""
    if announce:
        emit(start_event(mjob.key, os.getpid()))
    last = {"t": 0.0, "desc": None}

    def progress_for(label: str):
        def progress(desc: str, frac: float) -> None:
            _fault_once(mjob.key)  # mid-run: the model is loaded and the export has begun
            now = time.monotonic()
            if desc != last["desc"] or now - last["t"] > 0.5:  # a few events a second at most
                last.update(t=now, desc=desc)
                emit({"job": mjob.key, "kind": "progress", "bundle": label, "desc": desc, "frac": float(frac)})
        return progress

    t0 = time.perf_counter()
    job = mjob.job if mjob.url is None else replace(mjob.job, out=Path(tempfile.mkdtemp(prefix="smolship-stage-")))
    outcome = run_target_job(job, progress_for=progress_for)
    outcome.manifests = [read_manifest(Path(b)) for b in outcome.bundles]
    if mjob.url is not None:  # copy each finished bundle up (manifest last), then the job's log
        try:
            outcome.bundles = [_publish(Path(b), store.join(mjob.url, Path(b).name)) for b in outcome.bundles]
            if outcome.log and Path(outcome.log).is_file():
                outcome.log = _publish_log(Path(outcome.log), store.join(mjob.url, Path(outcome.log).name))
        except Exception as e:  # a storage error is this job's failure, not a lost worker to retry
            outcome.bundles, outcome.manifests = [], []
            outcome.error = f"copying the bundles to {mjob.url} failed: {type(e).__name__}: {e}"
            outcome.fix = "Check the storage URL, its credentials and free space, then run the matrix again."
        finally:
            shutil.rmtree(job.out, ignore_errors=True)
    outcome.host, outcome.seconds = socket.gethostname(), round(time.perf_counter() - t0, 1)
    return outcome


def finished_event(key: str, outcome: TargetOutcome) -> dict:
    """Sent by the driver once it holds the job's result (a worker's last message could be lost)."""
    return {"job": key, "kind": "failed" if outcome.error else "done", "host": outcome.host,
            "seconds": outcome.seconds, "bundles": [Path(b).name for b in outcome.bundles], "error": outcome.error}


def _publish(bundle: Path, url: str) -> str:
    store.publish(bundle, url)
    return url


def _publish_log(log: Path, url: str) -> str:
    store.write_text(url, log.read_text(errors="replace"))
    return url
