# The front door. `make run` and `make test` each create (or reuse) .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.normlab-installed
JOBS ?= 2
STUDY ?= seed_question

.PHONY: venv run test test-fast lint format bench clean-results

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned `torch>=2.3` in a fresh venv would pull GBs of CUDA wheels
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# the compiled CPU training steps (batch, moving_average, renorm, online), built once here
	# rather than inside the first run (about a minute; without a C++ compiler the layers keep
	# their pure-PyTorch path)
	$(PY) -c "import normlab.norms.kernels as k; k.build()" || echo "warning: compiled norm kernels not built"
	touch $(STAMP)

venv: $(STAMP)

# The default study on MNIST-1D with $(JOBS) parallel jobs, then its figures and tables.
run: $(STAMP)
	$(VENV)/bin/normlab-train -m +experiment=$(STUDY) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
	$(VENV)/bin/normlab-plot results/runs/$(STUDY) --out results/figures/$(STUDY)

test: $(STAMP)
	$(VENV)/bin/pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) scripts/bench_norm.py
	$(PY) scripts/bench_trainer.py
