"""Several targets in one command: one worker process per bundle or target (a crash in one cannot lose the
others), `--jobs N` of them at a time, and the parity budget (`--max-kld`): the smallest recipe whose
measured kld_mean fits wins.

Parity does not depend on what else runs, latency does: with `TargetJob.latency_after` a job measures
parity only, and `measure_latency_after` times every bundle of the run once all exports have finished, one
bundle at a time, so parallel exports never publish the speeds of a loaded machine.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import shutil
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from smolship.errors import SmolshipError
from smolship.targets import ExportOptions, Precision

PRECISION_ORDER = [Precision.INT4, Precision.INT8, Precision.FP16, Precision.FP32]


@dataclass
class TargetJob:
    model: str | None
    target: str
    recipes: list[str]
    out: Path
    options: ExportOptions
    settings: object | None  # ValidationSettings, None = --no-validate
    force: bool = False
    max_kld: float | None = None
    show_progress: bool = True
    latency_after: bool = False  # parity here; latency by measure_latency_after once every export is done
    log_name: str | None = None  # under `out`; default export-<target>.log


@dataclass
class TargetOutcome:
    target: str
    bundles: list[str] = field(default_factory=list)
    tried: list[dict] = field(default_factory=list)  # parity-budget log
    error: str | None = None
    fix: str | None = None
    log: str | None = None  # the libraries' output for this target (OUT/export-<target>.log)
    manifests: list[dict] = field(default_factory=list)  # of `bundles`, for a driver that cannot read them (URLs)
    host: str | None = None  # where a matrix job ran, and for how long
    seconds: float | None = None


# What one bundle of each target costs to export and validate, relative to GGUF q8_0 (the default model, two
# bundles at a time on 2 cores, issue 26: ExecuTorch 288-409 s, ONNX 103-120 s, GGUF 75-105 s, Core ML ~100 s
# a recipe after its one conversion).
BUNDLE_COST = {"executorch": 3.4, "onnx": 1.1, "coreml": 1.0, "gguf": 1.0}
# Targets whose recipes share work inside one process: Core ML converts once and compresses each recipe
# from that fp16 package (coreml/target.py), so its recipes stay in one job.
KEEP_TOGETHER = {"coreml"}


def one_job_per_bundle(jobs: list[TargetJob]) -> list[TargetJob]:
    """Split target jobs into one job per bundle, scheduled for `run_jobs`: the cheapest bundle first (a
    newcomer sees a finished bundle within minutes), then the most expensive first, so the long exports do
    not end up alone at the end of the run. A parity-budget job (max_kld) keeps its recipes together (it
    stops at the first one that fits), and so does a target in KEEP_TOGETHER."""
    split = [replace(j, recipes=[r], log_name=f"export-{j.target}-{r}.log") if r is not None else j
             for j in jobs for r in (j.recipes if j.max_kld is None and j.target not in KEEP_TOGETHER else [None])]
    if len(split) < 3:
        return split
    def cost(job):
        return BUNDLE_COST.get(job.target, 1.0) * len(job.recipes)

    first = min(split, key=cost)
    return [first] + sorted((j for j in split if j is not first), key=cost, reverse=True)


def budget_order(target) -> list[str]:
    """Recipes from smallest to largest: by precision class, then as the target lists them."""
    names = list(target.recipes)
    return sorted(names, key=lambda n: (PRECISION_ORDER.index(target.recipes[n].precision), names.index(n)))


def run_target_job(job: TargetJob, progress_for=None, say=None) -> TargetOutcome:
    """Runs in a worker process: export (and validate) every recipe of one target.

    Library output (converters' progress bars, C++ runtime logs, warnings) goes to OUT/export-<target>.log;
    the terminal gets one progress display per bundle and one summary line when it is done, unless
    `progress_for(bundle label)` gives the progress(desc, fraction) callback (a matrix job streams it to its driver;
    parallel export workers to the parent, with `say(label, line)` for the summary line).
    """
    import time

    from rich.console import Console

    from smolship.export import export_bundle
    from smolship.exporter.sources import load_model
    from smolship.logs import library_output_to, progress_bar, quiet_library_logs
    from smolship.targets import get_target
    from smolship.validation.validate import Validator

    quiet_library_logs()  # a spawned process: the parent's logging setup does not carry over
    outcome = TargetOutcome(job.target)
    Path(job.out).mkdir(parents=True, exist_ok=True)
    outcome.log = str(Path(job.out) / (job.log_name or f"export-{job.target}.log"))
    with library_output_to(Path(outcome.log)) as terminal:
        screen = Console(file=terminal, highlight=False)
        try:
            target = get_target(job.target)
            source = load_model(job.model)
            settings = replace(job.settings, measure_latency=False) if job.latency_after and job.settings else job.settings
            validator = Validator(source, settings) if settings is not None else None
            recipes = budget_order(target) if job.max_kld is not None else job.recipes
            for name in recipes:
                t0 = time.perf_counter()
                label = f"{job.target}-{name}"
                display = progress_bar(job.show_progress, on=screen, label=label) if progress_for is None else \
                    contextlib.nullcontext(progress_for(label))
                with display as progress:
                    path, manifest = export_bundle(source, job.target, target.recipes[name], job.out, job.options,
                                                   validator, job.force, progress)
                if job.show_progress:
                    line = bundle_done_line(path, manifest, time.perf_counter() - t0)
                    say(label, line) if say else screen.print(line)
                if job.max_kld is None:
                    outcome.bundles.append(str(path))
                    continue
                kld = (manifest.get("validation") or {}).get("kld_mean")
                fits = kld is not None and kld <= job.max_kld
                outcome.tried.append({"recipe": name, "size_mb": manifest["size_mb"], "kld_mean": kld, "fits": fits})
                if fits:
                    outcome.bundles.append(str(path))
                    break
                shutil.rmtree(path)  # over budget: do not leave it looking like a result
            if job.max_kld is not None and not outcome.bundles:
                raise SmolshipError(f"No {job.target} recipe reaches kld_mean ≤ {job.max_kld} on this model.",
                                    "Raise --max-kld, or see the tried recipes above for what each reached.")
        except SmolshipError as e:
            outcome.error, outcome.fix = e.problem, e.fix
        except Exception as e:  # report, do not lose the other targets
            traceback.print_exc()  # into the log
            outcome.error = f"{type(e).__name__}: {e}"
            outcome.fix = f"The traceback and the libraries' output are in {outcome.log}."
    return outcome


def bundle_done_line(path: Path, manifest: dict, seconds: float) -> str:
    """One line per finished bundle: what a person scanning `make demo` needs."""
    v = manifest.get("validation") or {}
    kld = v.get("kld_mean")
    parity = f"kld_mean {kld:.4f}  top-1 {v.get('top1_agreement', 0):.3f}" if kld is not None else "not validated"
    lc = v.get("long_context") or {}
    if "kld_mean_late" in lc:
        parity += f"  late kld {lc['kld_mean_late']:.4f} ({lc['positions']} positions)"
    reused = "; ".join(f"{label}: {how}" for label, how in (manifest.get("cache") or {}).items())
    return (f"[green]done[/] [bold]{Path(path).name:<18}[/] {manifest.get('size_mb', 0):>7.1f} MB  {parity}  ({seconds:.0f} s)"
            + (f"  [dim]{reused}[/]" if reused else ""))


_events = None  # in a run_jobs worker: the queue to the parent's display


def _attach(events) -> None:
    global _events
    _events = events


def _run_reporting(job: TargetJob) -> TargetOutcome:
    """run_target_job in a run_jobs worker, its progress and summary lines drawn by the parent."""
    if _events is None or not job.show_progress:
        return run_target_job(job)
    put = _events.put
    return run_target_job(job, progress_for=lambda label: (lambda desc, frac: put(("progress", label, desc, frac))),
                          say=lambda label, line: put(("line", label, line)))


def run_jobs(jobs: list[TargetJob], parallel: int = 1) -> list[TargetOutcome]:
    """One fresh process per job, a bundle or a target (spawned: no state leaks between runtimes); the parent draws every
    worker's progress, one line per bundle (logs.progress_from)."""
    from smolship.logs import progress_from

    ctx = mp.get_context("spawn")
    events = ctx.Queue() if any(j.show_progress for j in jobs) else None
    display = progress_from(events) if events is not None else contextlib.nullcontext()
    with display, ProcessPoolExecutor(max_workers=max(1, parallel), mp_context=ctx, max_tasks_per_child=1,
                                      initializer=_attach, initargs=(events,)) as pool:
        futures = [pool.submit(_run_reporting, j) for j in jobs]
        outcomes = []
        for job, fut in zip(jobs, futures):
            try:
                outcomes.append(fut.result())
            except Exception as e:  # the worker process itself died (segfault, OOM kill)
                outcomes.append(TargetOutcome(job.target, error=f"the {job.target} worker process died ({type(e).__name__}: {e})",
                                              fix="Run this target alone to see what failed; check free memory."))
    return outcomes


def measure_latency_after(outcomes: list[TargetOutcome], settings, show_progress: bool = True) -> None:
    """Latency of every bundle in `outcomes`, each alone in a fresh worker process after all exports have
    finished, written into its manifest and model card (validate.save_latency). A bundle whose latency
    cannot be measured is removed and its target reported as failed, as an export whose validation fails
    leaves nothing. `settings`: LatencySettings."""
    from rich.console import Console

    from smolship.bundle import read_manifest
    from smolship.validation.latency import latency_in_worker
    from smolship.validation.validate import save_latency

    screen = Console(stderr=True, highlight=False)
    for outcome in outcomes:
        for bundle in list(outcome.bundles):
            manifest = read_manifest(Path(bundle))
            if not (manifest.get("validation") or {}).get("runtime_ran"):
                continue  # Core ML off macOS: no runtime to time (the report says so)
            try:
                result = latency_in_worker(bundle, settings)
            except Exception as e:  # noqa: BLE001 - the worker failed or timed out: this bundle, not the run
                shutil.rmtree(bundle, ignore_errors=True)
                outcome.bundles.remove(bundle)
                problem = e.problem if isinstance(e, SmolshipError) else f"{type(e).__name__}: {e}"
                outcome.error = f"{Path(bundle).name}: latency could not be measured: {problem}"
                outcome.fix = e.fix if isinstance(e, SmolshipError) else "Run `smolship bench` on the bundle to see why."
                continue
            save_latency(Path(bundle), manifest, result)
            if show_progress:
                screen.print(speed_line(Path(bundle), result))


def speed_line(path: Path, result: dict) -> str:
    """One line per bundle of the latency pass, its mark included when the machine was loaded."""
    from smolship.validation.latency import UNRELIABLE

    mark = f"  [yellow]{UNRELIABLE}: {result.get('latency_note')}[/]" if result.get("latency_reliable") is False else ""
    return (f"[green]speed[/] [bold]{path.name:<18}[/] decode {result['decode_tok_s']:>7.1f} tok/s  prefill "
            f"{result['prefill_tok_s']:>7.1f} tok/s  ttft {result['ttft_ms']:.0f} ms"
            + (f"  peak RSS {result['full_context_peak_rss_mb']:.0f} MB with the cache full"
               if result.get("full_context_peak_rss_mb") is not None else "") + mark)
