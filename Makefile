# Set-up and checks. `make run` and `make test` each create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: run test test-gpu kernel-table bench clean

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
test: $(VENV)/.test
	FUSEDOPT_STRICT_SKIPS=1 $(PY) -m pytest -q -p no:cacheprovider

# For machines with a CUDA GPU (after `pip install fusedopt[cuda12]` or `[cuda13]`).
test-gpu: $(VENV)/.test
	$(PY) -m pytest -q -m gpu

kernel-table: $(VENV)/.test
	$(PY) -m fusedopt._cuda.report --write kernels/README.md

bench: $(VENV)/.base
	$(VENV)/bin/fusedopt bench --json benchmarks/bench.json --plot benchmarks/bench.png

clean:
	rm -rf $(VENV) .pytest_cache build dist
