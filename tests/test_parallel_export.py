"""`smolship export --jobs auto` and latency after the exports (issue 26): the job count comes from the cores
and preflight's memory estimate; export jobs measure parity only, and every bundle's latency is measured
afterwards, one at a time, then written into its manifest and model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smolship.errors import SmolshipError
from smolship.exporter.config import PRESETS
from smolship.preflight import auto_jobs, export_memory_bytes, parse_jobs

TARGETS = ["onnx", "coreml", "executorch", "gguf"]
SPEEDS = ("prefill_tok_s", "decode_tok_s", "ttft_ms")


def test_jobs_auto_takes_what_the_cores_and_free_memory_hold():
    big = PRESETS["smollm2-1.7b"]
    one, two = (export_memory_bytes(big, 2048, TARGETS, k) for k in (1, 2))
    assert auto_jobs(big, 2048, TARGETS, cores=8, available=one)[0] == 1  # room for the hungriest job alone
    assert auto_jobs(big, 2048, TARGETS, cores=8, available=two)[0] == 2
    assert auto_jobs(big, 2048, TARGETS, cores=2, available=100 * two)[0] == 2  # never more than the cores
    assert auto_jobs(big, 2048, ["gguf"], cores=8, available=100 * two)[0] == 1  # nor than the targets
    jobs, note = auto_jobs(None, 2048, TARGETS, cores=8, available=100 * two)  # a hub id: size unknown
    assert jobs == 1 and "not known" in note
    assert "2 export processes at once (2 cores" in auto_jobs(big, 2048, TARGETS, cores=2, available=100 * two)[1]
    assert parse_jobs("auto") == "auto" and parse_jobs("3") == 3
    for bad in ("0", "two"):
        with pytest.raises(SmolshipError, match="--jobs"):
            parse_jobs(bad)


def test_parallel_exports_leave_latency_to_one_bundle_at_a_time_afterwards(tmp_path, capsys):
    from smolship.bundle import verify_bundle
    from smolship.export_matrix import TargetJob, measure_latency_after, run_jobs
    from smolship.targets import ExportOptions
    from smolship.validation.latency import LatencySettings
    from smolship.validation.parity import ParitySettings
    from smolship.validation.validate import ValidationSettings

    latency = LatencySettings(prompt_tokens=16, new_tokens=8, runs=1)
    settings = ValidationSettings(eval_tokens=128, latency=latency, parity=ParitySettings(greedy_prompts=1, greedy_tokens=8))
    jobs = [TargetJob("random:tiny", t, [r], tmp_path, ExportOptions(max_seq_len=256), settings, latency_after=True)
            for t, r in (("gguf", "q8_0"), ("onnx", "fp32"))]
    outcomes = run_jobs(jobs, parallel=2)
    assert [o.error for o in outcomes] == [None, None]
    shown = capsys.readouterr().err  # both workers' lines, drawn by this process
    assert "done gguf-q8_0" in shown and "done onnx-fp32" in shown
    bundles = [Path(b) for o in outcomes for b in o.bundles]
    assert len(bundles) == 2
    for b in bundles:  # parity in the export jobs, no speed taken while the other one exported
        v = json.loads((b / "manifest.json").read_text())["validation"]
        assert v["kld_mean"] is not None and not any(k in v for k in SPEEDS)
        assert "| speed | not measured at export |" in (b / "README.md").read_text()
    measure_latency_after(outcomes, latency, show_progress=False)
    for b in bundles:
        manifest = verify_bundle(b)  # the rewritten card and manifest are listed with their new sha256
        v = manifest["validation"]
        assert all(v[k] > 0 for k in SPEEDS) and v["kld_mean"] is not None and "latency_reliable" in v
        assert "| decode_tok_s |" in (b / "README.md").read_text()


def test_cli_jobs_auto_exports_then_times_each_bundle(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", "from smolship.cli.app import main; main()", "export", "random:tiny",
                           "--target", "gguf", "--quant", "q8_0", "--jobs", "auto", "--eval-tokens", "128", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    done, speed = proc.stderr.find("done gguf-q8_0"), proc.stderr.find("speed gguf-q8_0")
    assert 0 <= done < speed, proc.stderr  # one line per bundle for the export, then one for its timing
    v = json.loads((out / "gguf-q8_0" / "manifest.json").read_text())["validation"]
    assert v["decode_tok_s"] > 0 and v["kld_mean"] is not None
    report = (out / "report.md").read_text()
    assert "gguf-q8_0" in report and "decode_tok_s" in report


def test_a_bundle_whose_latency_fails_is_removed_and_its_target_reported(tmp_path, monkeypatch):
    from smolship.export_matrix import TargetJob, measure_latency_after, run_target_job
    from smolship.targets import ExportOptions
    from smolship.validation import latency
    from smolship.validation.parity import ParitySettings
    from smolship.validation.validate import ValidationSettings

    settings = ValidationSettings(eval_tokens=64, parity=ParitySettings(greedy_prompts=1, greedy_tokens=4))
    outcome = run_target_job(TargetJob("random:tiny", "gguf", ["q8_0"], tmp_path, ExportOptions(max_seq_len=128),
                                       settings, show_progress=False, latency_after=True))
    bundle = Path(outcome.bundles[0])

    def dies(what, settings):
        raise SmolshipError(f"The latency worker failed for '{what}'", "Run `smolship validate` on the bundle.")

    monkeypatch.setattr(latency, "latency_in_worker", dies)
    measure_latency_after([outcome], settings.latency, show_progress=False)
    assert not bundle.exists() and outcome.bundles == []
    assert "gguf-q8_0: latency could not be measured" in outcome.error


def test_the_parent_draws_every_workers_lines():
    import queue

    from rich.console import Console

    from smolship.logs import progress_from

    events, console = queue.Queue(), Console(record=True, width=120)
    with progress_from(events, on=console):
        events.put(("progress", "onnx-int8", "torch.onnx export", 0.3))
        events.put(("progress", "gguf-q8_0", "quantizing", 0.5))
        events.put(("line", "onnx-int8", "done onnx-int8  3.7 MB"))
        events.put(("line", "gguf-q8_0", "done gguf-q8_0  5.2 MB"))
    text = console.export_text()
    assert text.index("done onnx-int8") < text.index("done gguf-q8_0")



def test_one_job_per_bundle_puts_a_quick_bundle_first_then_the_longest():
    from smolship.export_matrix import TargetJob, one_job_per_bundle
    from smolship.targets import ExportOptions

    opts = ExportOptions()
    jobs = [TargetJob(None, "onnx", ["int8", "int4"], Path("o"), opts, None),
            TargetJob(None, "gguf", ["q8_0", "q4_k_m"], Path("o"), opts, None),
            TargetJob(None, "executorch", ["8da8w", "8da4w"], Path("o"), opts, None)]
    split = one_job_per_bundle(jobs)
    assert [(j.target, j.recipes) for j in split] == [
        ("gguf", ["q8_0"]),                                     # a finished bundle within minutes
        ("executorch", ["8da8w"]), ("executorch", ["8da4w"]),   # then the longest first
        ("onnx", ["int8"]), ("onnx", ["int4"]), ("gguf", ["q4_k_m"])]
    assert len({j.log_name for j in split}) == 6 and split[0].log_name == "export-gguf-q8_0.log"
    budget = TargetJob(None, "onnx", ["int4", "int8"], Path("o"), opts, None, max_kld=0.01)
    assert one_job_per_bundle([budget]) == [budget]  # a parity budget stops at the first recipe that fits
    coreml = TargetJob(None, "coreml", ["fp16", "w8", "w4"], Path("o"), opts, None)
    assert one_job_per_bundle([coreml]) == [coreml]  # one fp16 conversion serves its three recipes
