# Fresh machine: `make demo` or `make test` create .venv and install the pinned dependencies first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.smolship-installed
# llama-cpp-python compiles llama.cpp (~11 min on 2 cores). No comment on the assignment line:
# Make keeps the spaces before a trailing comment in the value, and cmake refuses '2   '.
CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export CMAKE_BUILD_PARALLEL_LEVEL := $(strip $(CMAKE_BUILD_PARALLEL_LEVEL))

.PHONY: setup demo test test-fast clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	# torch first, pinned: the CPU build of 2.13.0 (executorch 1.5.1 links against exactly this libtorch)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/smolship inspect
	$(VENV)/bin/smolship chat --prompt "What is the capital of France?"
	$(VENV)/bin/smolship export --out out --force

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf out .pytest_cache
