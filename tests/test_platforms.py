"""A bundle in the runtime builds phones and apps use: the app-pinned runtime version and arm64 kernels.

- The runtime host serves a bundle's own Runner from another Python; hosted natively it must give the
  in-process runner's logits bit for bit, or every foreign figure would measure the pipe.
- The apps' pinned runtime versions (validation.platforms.APP_RUNTIMES) are the ones the app sources pin,
  and an ExecuTorch bundle's validation proves it in each of them (its wheel, under <venv>/runtimes).
- arm64: the bundle's runtime built for aarch64, in an arm64 CPython under qemu user-mode
  (`make setup-arm64`), one bundle per runtime; CI sets it up, so these tests run there.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from smolship import model_card
from smolship.errors import SmolshipError
from smolship.export import export_bundle
from smolship.targets import ExportOptions, get_target
from smolship.validation import platforms as P
from smolship.validation.hosted import HostedRunner, child_env

ROOT = Path(__file__).resolve().parents[1]
HOSTED = ["executorch", "onnx", "gguf"]  # the targets whose runtimes run off macOS (conftest.tiny_bundle)
IDS = [1, 504, 3458, 314, 260, 3575, 282, 4649, 47, 2, 17, 9, 300]


def _logits(runner) -> np.ndarray:
    rows = [runner.prefill(IDS[:5])] + [runner.decode(t)[None] for t in IDS[5:]]
    return np.concatenate(rows)


@pytest.mark.parametrize("target", HOSTED)
def test_hosted_runner_is_the_in_process_runner_bit_for_bit(tiny_bundle, target):
    path, manifest = tiny_bundle(target)
    local = get_target(target).load_runner(path, manifest)
    hosted = HostedRunner(path, [sys.executable], child_env(), "this python")
    try:
        want, got = _logits(local), _logits(hosted)
        assert hosted.info["arch"] == "x86_64" and hosted.max_seq_len == local.max_seq_len
        assert hosted.info["versions"]  # the runtime build that ran is named
        np.testing.assert_array_equal(got, want)
        with pytest.raises(SmolshipError, match="KV cache holds"):  # the runner's own errors come back as errors
            hosted.prefill(list(range(1, 140)))
        np.testing.assert_array_equal(hosted.prefill(IDS[:5]), want[:5])  # and the host keeps serving
    finally:
        local.close()
        hosted.close()


def test_a_dead_runtime_process_is_a_clear_error(tiny_bundle, tmp_path):
    path, _ = tiny_bundle("onnx")
    with pytest.raises(SmolshipError, match="ended unexpectedly"):
        HostedRunner(path, [sys.executable, "-c", "import sys; sys.exit(3)", "--"], child_env(), "broken")


# --- the apps' runtime versions -------------------------------------------------------------------------
def _pinned_versions() -> dict[str, str]:
    """What the app sources pin: Maven executorch-android in libs.versions.toml, the SwiftPM branch in project.yml."""
    toml = (ROOT / "examples/android/gradle/libs.versions.toml").read_text()
    yml = (ROOT / "examples/ios/project.yml").read_text()
    android = re.search(r'^executorch\s*=\s*"([\d.]+)"', toml, re.M).group(1)
    ios = re.search(r"branch:\s*swiftpm-([\d.]+)", yml).group(1)
    return {"android": android, "ios": ios}


def test_app_runtime_table_is_what_the_app_sources_pin():
    assert {rt.app: rt.version for rt in P.APP_RUNTIMES} == _pinned_versions()
    for rt in P.APP_RUNTIMES:
        assert (ROOT / rt.pinned_in).is_file()


def test_tiny_executorch_bundle_is_proven_in_every_app_runtime(tiny_bundle):
    """Export validates an ExecuTorch bundle in each pinned runtime version that differs from the exporter's
    (iOS's 1.5.0), and the manifest and model card name each version with its figures."""
    path, manifest = tiny_bundle("executorch")
    rows = {r["platform"]: r for r in manifest["validation"]["platforms"]}
    exporter = P.installed_version("executorch")
    assert rows["native"]["versions"]["executorch"] == exporter
    others = {rt.version for rt in P.APP_RUNTIMES} - {exporter}
    assert others, "the apps pin only the exporter's version: this test would prove nothing"
    for version in others:
        row = rows[f"executorch {version}"]
        assert row["versions"]["executorch"] == version  # that wheel's runtime ran, not the exporter's
        assert row["kld_mean"] < 1e-4 and row["vs_native"]["top1_agreement"] == 1.0, row  # fp32: float noise only
        assert "ios app pin" in row["note"]
    card = (path / model_card.CARD).read_text()
    assert "## Proven in" in card
    for version in {exporter, *others}:
        assert f"executorch {version}" in card


def test_unknown_platforms_fail_before_any_work(tiny_bundle, monkeypatch, tmp_path):
    with pytest.raises(SmolshipError, match="not supported"):
        P.parse_arch("riscv64")
    with pytest.raises(SmolshipError, match="cannot run a executorch bundle"):
        P.parse_runtime("onnxruntime==1.31.1", "executorch")
    with pytest.raises(SmolshipError, match="not understood"):
        P.parse_runtime("executorch", "executorch")
    monkeypatch.setattr(P, "venv_dir", lambda: tmp_path)  # a machine where setup-arm64 never ran
    with pytest.raises(SmolshipError, match="make setup-arm64"):
        P.parse_arch("arm64")


def test_a_build_that_cannot_run_the_bundle_is_a_row_saying_why(tiny_bundle, tiny_validator):
    """e.g. executorch 1.5.1's aarch64 wheel on an armv8.0 core (SIGILL: LSE atomics), or a build that fails to start:
    the other platforms are still measured and the report says what did not run."""
    path, manifest = tiny_bundle("onnx")
    known = P.Platform("arm64 old (qemu)", (sys.executable,), child_env(), arch="aarch64", cpu="old",
                       unsupported={"onnx": "needs LSE atomics"})
    broken = P.Platform("broken", (sys.executable, "-c", "raise SystemExit(3)", "--"), child_env())
    rows = tiny_validator.platform_rows(path, manifest, [known, broken, P.Platform("again", (sys.executable,), child_env())],
                                        tokens=64)
    assert rows[1] == {"platform": "arm64 old (qemu)", "arch": "aarch64", "cpu": "old", "error": "needs LSE atomics"}
    assert "ended unexpectedly" in rows[2]["error"]
    assert rows[3]["vs_native"]["kld_mean"] == 0.0  # measured after both


# --- arm64 kernels under emulation ----------------------------------------------------------------------
def _arm64_ready() -> bool:
    return P.arm64_env_file().is_file()


needs_arm64 = pytest.mark.skipif(not _arm64_ready() and "SMOLSHIP_CI" not in os.environ,
                                 reason="`make setup-arm64` has not run (CI runs it; there this test fails instead)")


@needs_arm64
@pytest.mark.parametrize("target", ["onnx", "executorch", "gguf"])
def test_tiny_bundle_on_arm64_matches_x86(tiny_bundle, tiny_validator, target):
    """fp32 (q8_0 for GGUF) random:tiny on the aarch64 build: an arm64 runtime, arm64 features, logits that agree."""
    path, manifest = tiny_bundle(target)
    plat = P.arm64()
    rows = tiny_validator.platform_rows(path, manifest, [plat], tokens=64)
    native, arm = rows
    assert arm["arch"] == "aarch64" and native["arch"] == "x86_64"
    assert "asimddp" in arm["cpu_features"] or plat.cpu == "cortex-a72", arm  # the emulated CPU's hwcaps are read
    # q8_0 on a random model has near ties: a dot-product kernel path may flip one of 64 top-1s (measured 2 of 64)
    assert arm["vs_native"]["top1_agreement"] >= 0.9 and arm["vs_native"]["kld_mean"] < 1e-3, arm


@pytest.fixture(scope="module")
def real_gguf_q4_k_m(default_model, tmp_path_factory):
    """The real 135M as the default 4-bit GGUF (not validated here: the arm64 test measures both builds)."""
    pytest.importorskip("llama_cpp")
    return export_bundle(default_model, "gguf", get_target("gguf").recipes["q4_k_m"], tmp_path_factory.mktemp("gguf"),
                         ExportOptions(max_seq_len=512), validator=None)


@needs_arm64
@pytest.mark.slow
@pytest.mark.parametrize("target", [  # each with the tests of the shared export it reuses (conftest.SHARED_EXPORTS)
    pytest.param("onnx", marks=pytest.mark.xdist_group("js_int4_bundle")),
    pytest.param("executorch", marks=pytest.mark.xdist_group("real_executorch_8da4w")),
    "gguf"])
def test_real_4bit_bundle_on_arm64_with_its_x86_figure(target, request, default_validator):
    """The default 4-bit bundle of each runtime (what phones load) on the arm64 build of its runtime, 256 eval
    tokens through its own decode loop, beside the x86 build on the same tokens; both platforms are recorded
    in the manifest and the model card. On the real 135M the two builds differ (different kernels round
    differently) but neither is much further from the reference: an arm64 kld above 1.5x the x86 one would be
    a finding, and this test would name it."""
    fixture = {"onnx": "js_int4_bundle", "executorch": "real_executorch_8da4w", "gguf": "real_gguf_q4_k_m"}[target]
    path, manifest = request.getfixturevalue(fixture)[:2]
    rows = default_validator.platform_rows(path, manifest, [P.arm64()], tokens=P.PLATFORM_EVAL_TOKENS)
    native, arm = rows[0], rows[-1]
    assert arm["arch"] == "aarch64" and arm["eval_tokens"] >= 256 and arm["cpu_features"], arm
    assert arm["vs_native"]["top1_agreement"] >= 0.8, arm  # the same program, kernels differ by rounding only
    assert not arm["finding"], (f"arm64-only divergence on {path.name}: kld {arm['kld_mean']:.4g} vs x86 "
                                f"{native['kld_mean']:.4g} (vs x86 logits: {arm['vs_native']})")
    from smolship.validation.validate import save_platform_rows

    save_platform_rows(path, manifest, rows)  # --record: the manifest names both platforms, the card shows them
    saved = json.loads((path / "manifest.json").read_text())
    assert {r["arch"] for r in saved["validation"]["platforms"]} >= {"x86_64", "aarch64"}
    assert "aarch64" in (path / model_card.CARD).read_text()
    from smolship.bundle import verify_files

    assert not verify_files(path, saved)  # the re-listed sha256 match the rewritten card
