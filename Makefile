# Fresh machine: `make demo` or `make test` check the machine, create .venv and install the pinned
# dependencies first (pip compiles llama.cpp for llama-cpp-python: ~11 min on 2 cores).
VENV    ?= .venv
# The distribution's python3.11 first when it can make a venv: Debian's is built with PGO + LTO, and the
# exports are Python-bound (torch.export / ExecuTorch lowering: 1.33x faster than a pyenv build, measured).
ifndef PYTHON
PYTHON  := $(shell for p in /usr/bin/python3.11 python3.11 python3; do command -v $$p >/dev/null 2>&1 \
             && $$p -c 'import ensurepip, venv' 2>/dev/null && { command -v $$p; exit 0; }; done; echo python3)
endif
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.smolship-installed
OUT     ?= out
# No comment on the assignment line: Make keeps the spaces before a trailing comment in the value,
# and cmake refused CMAKE_BUILD_PARALLEL_LEVEL='2   ' (the first-command failure of issue 13).
CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)
override CMAKE_BUILD_PARALLEL_LEVEL := $(strip $(CMAKE_BUILD_PARALLEL_LEVEL))
export CMAKE_BUILD_PARALLEL_LEVEL
# Per-test limit (seconds): the slowest real-model test, with its session export, takes ~4 min here.
TEST_TIMEOUT ?= 1200
PIP     := $(PY) -m pip --disable-pip-version-check

.PHONY: setup setup-js setup-arm64 demo test test-fast check-machine clean

check-machine:
	@$(PYTHON) scripts/check_machine.py setup $(PYTHON)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) scripts/check_machine.py setup $(PYTHON)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "smolship setup: installing into $(VENV) (llama.cpp compiles: ~11 min on 2 cores, log in $(VENV)/setup.log)"
	$(PIP) install -q -U pip > $(VENV)/setup.log 2>&1 || { tail -30 $(VENV)/setup.log; exit 1; }
	@# torch first, pinned: the CPU build of 2.13.0 (executorch 1.5.1 links against exactly this libtorch)
	$(PIP) install torch==2.13.0 >> $(VENV)/setup.log 2>&1 || { tail -30 $(VENV)/setup.log; exit 1; }
	$(PIP) install -e '.[all]' >> $(VENV)/setup.log 2>&1 || { tail -40 $(VENV)/setup.log; echo "setup failed: full log in $(VENV)/setup.log"; exit 1; }
	@# the ExecuTorch runtime versions the example apps pin, when they differ from the exporter's (validation proves bundles in them)
	$(PY) -m smolship.validation.platforms >> $(VENV)/setup.log 2>&1 || { tail -20 $(VENV)/setup.log; exit 1; }
	touch $(STAMP)

setup: $(STAMP)

# The browser and Node tests need Debian's chromium and the examples' npm packages (from their lockfiles);
# `make demo` does not.
JS_STAMP := $(VENV)/.smolship-js-installed
$(JS_STAMP): $(STAMP) $(wildcard examples/setup-js.sh examples/*/package-lock.json)
	@if [ -x examples/setup-js.sh ]; then echo "smolship setup: chromium + npm packages for the browser / Node tests (log in $(VENV)/setup-js.log)"; \
	  examples/setup-js.sh > $(VENV)/setup-js.log 2>&1 || { tail -30 $(VENV)/setup-js.log; echo "JS setup failed: full log in $(VENV)/setup-js.log"; exit 1; }; fi
	touch $(JS_STAMP)

setup-js: $(JS_STAMP)

demo: setup
	@$(PY) scripts/check_machine.py demo
	$(VENV)/bin/smolship inspect
	$(VENV)/bin/smolship chat --prompt "What is the capital of France?"
	$(VENV)/bin/smolship export --out $(OUT) --force

test: setup setup-js setup-arm64
	$(PY) -m pytest -q -n auto --dist loadgroup --durations=30 --timeout=$(TEST_TIMEOUT)

test-fast: setup
	$(PY) -m pytest -q -n auto --dist loadgroup -m "not slow" --durations=15 --timeout=$(TEST_TIMEOUT)

clean:
	rm -rf $(OUT) .pytest_cache

# arm64 runtimes under qemu user-mode in $(VENV)/arm64 (3 GB download, 4.4 GB disk, ~6 min fresh on 2 cores
# of which llama.cpp's cross-compile ~3; re-runs ~1 s). Pins follow $(VENV)'s versions. See scripts/arm64_env.py.
setup-arm64: $(STAMP)
	$(PY) scripts/arm64_env.py --dest $(VENV)/arm64 --venv $(VENV)
