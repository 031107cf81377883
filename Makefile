# Two entry points for a fresh machine: `make demo` and `make test`.
# The CPU build of torch is installed first, pinned here (override: make test TORCH_VERSION=...),
# so that the range in pyproject.toml is already satisfied and pip pulls no CUDA packages.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint format clean figures

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/nfcli fit u1 -o runs/demo --force
	@echo "figures: runs/demo/density.png runs/demo/loss.png"

# Regenerates the README's figures (examples/figures/) with real fits at the defaults.
figures: setup
	$(BIN)/nfcli fit u1 -o runs/figures/u1 --force
	mkdir -p examples/figures
	cp runs/figures/u1/density.png examples/figures/u1-density.png
	cp runs/figures/u1/loss.png examples/figures/u1-loss.png

lint: setup
	$(BIN)/ruff check nfcli tests benchmarks examples
	$(BIN)/ruff format --check nfcli tests benchmarks examples

test: lint
	$(BIN)/python -m pytest

format: setup
	$(BIN)/ruff format nfcli tests benchmarks examples
	$(BIN)/ruff check --fix nfcli tests benchmarks examples

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
