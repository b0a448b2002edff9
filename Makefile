# Set-up and checks. `make run` and `make test` each create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test test-gpu kernel-table bench bench-results gpu-check clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --editable ".[peers]"
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) --editable ".[test]"
	touch $@

# The main job: the article's training example, then a quick fused-vs-unfused benchmark.
run: $(VENV)/.base
	$(VENV)/bin/fusedopt demo
	$(VENV)/bin/fusedopt bench --quick

# The whole suite, CPU only: backends vs reference and peers, the CUDA gates, host execution.
# Strict: a test skipped for want of something this target installs fails (tests/conftest.py).
# One pytest worker per core (pytest-xdist); the compiled-kernel artifacts are built once, by
# the first worker that needs them, under a lock (tests/conftest.py).
test: $(VENV)/.test
	FUSEDOPT_STRICT_SKIPS=1 $(PY) -m pytest -q -p no:cacheprovider -n auto

# For machines with a CUDA GPU (after `pip install fusedopt[cuda12]` or `[cuda13]`).
test-gpu: $(VENV)/.test
	$(PY) -m pytest -q -m gpu

kernel-table: $(VENV)/.test
	$(PY) -m fusedopt.tools.kernel_table --write kernels/README.md

bench: $(VENV)/.base
	$(VENV)/bin/fusedopt bench --json benchmarks/bench.json --plot benchmarks/bench.png

# Every CPU table of benchmarks/RESULTS.md and the roofline PNGs, regenerated (about 15 min
# on 2 cores). Record figures on a quiet machine: flock -x /tmp/fusedopt-quiet.lock make bench-results
bench-results: $(VENV)/.base
	$(PY) benchmarks/regenerate.py

# One call on a bare GPU machine (python3 with CuPy, torch, numba, pytest; no venv, nothing
# installed): GPU tests and benchmarks into $$GPU_REPORT_DIR (default ./gpu-report), < 8 min.
# Exit code 3 (and nothing run) where there is no GPU.
gpu-check:
	@$(PYTHON) fusedopt/tools/gpucheck/probe.py
	PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(PYTHON) -m fusedopt.tools.gpucheck

clean:
	rm -rf $(VENV) .pytest_cache build dist
