# Two commands on a fresh machine: `make run` and `make test`. Both go through `make setup`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tuneline-installed

.PHONY: setup run test test-all lint format clean bench

setup: $(STAMP)

# Re-installs only when pyproject.toml changes. torch==2.13.0 goes first so the CPU
# build is used where it is available and the dependency range never pulls CUDA wheels.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

run: setup
	$(PY) run.py --config configs/sft.yaml

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# CI gate: lint, the fast tier and the end-to-end pipeline test.
test: lint
	$(PY) -m pytest -m "not slow and not gpu" -q

# Everything, including the slow tier (gpu tests skip themselves without CUDA).
test-all: lint
	$(PY) -m pytest -q

# Training speed side by side (seed recipe, TRL, TRL packing, tuneline): benchmarks/README.md.
bench: setup
	$(PY) benchmarks/run.py --scale cpu --repeats 2

clean:
	rm -rf .tuneline .pytest_cache .ruff_cache
