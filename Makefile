# The front door. `make run` and `make test` each create (or reuse) .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.normlab-installed
JOBS ?= 2
QUICK ?= seed_question_quick
LOCAL ?= results/local
STUDY ?= seed_question_mlp
STUDIES ?= seed_question_mlp seed_question_cnn1d seed_question_mnist_mlp seed_question_mnist_cnn renorm_non_iid_mlp renorm_non_iid_cnn1d switch_point_mlp switch_point_cnn1d mabn_mlp mabn_ghost_mlp mabn_cnn1d mabn_ghost_cnn1d
# The images-per-GPU study (docs/distributed.md): plain sweeps at a fixed learning rate, one job
# at a time (a run's ranks fill the cores).
GPU_SWEEPS := images_per_gpu_mlp images_per_gpu_cnn1d
# the sweeps those studies write (mabn_ghost_mlp adds cells to mabn_mlp's), and the plain sweeps.
# Not blowup_ramp: its batch runs evaluate with a 0.99-decay EMA that lags the weights (6-8 pp
# below the same runs under constant momentum), which would confound seed_question's settings.
SWEEPS ?= $(filter-out mabn_ghost_%,$(STUDIES)) blowup $(GPU_SWEEPS)
# MNIST-5k and the other real-image data sets are looked for here (data=mnist_5k ...)
export NORMLAB_DATA ?= $(abspath ../shared/data)

.PHONY: venv run study studies blowup images-per-gpu claims overview test test-fast lint format bench

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

# The quick default study on MNIST-1D with $(JOBS) parallel jobs, trained into $(LOCAL) (never
# over the committed records), then its figures and tables beside the committed runs. Extra
# overrides in ARGS: `make run ARGS='pack=false'` trains one seed per process.
run: $(STAMP)
	$(VENV)/bin/normlab-train -m +experiment=$(QUICK) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) paths.results=$(LOCAL) $(ARGS)
	$(VENV)/bin/normlab-plot $(LOCAL)/runs/$(QUICK) --beside results/runs/$(QUICK) --out $(LOCAL)/figures/$(QUICK) --formats png

# One full study (learning rates chosen on a validation split, five seeds on the test split,
# figures): make study STUDY=seed_question_cnn1d. Resumes where it stopped.
study: $(STAMP)
	$(VENV)/bin/normlab-study $(STUDY) hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)

# Every committed study, then the claims table over all of them.
studies: $(STAMP)
	for s in $(STUDIES); do $(VENV)/bin/normlab-study $$s hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) || exit 1; done
	$(MAKE) blowup images-per-gpu claims overview

blowup: $(STAMP)
	$(VENV)/bin/normlab-train -m +experiment=blowup hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
	$(VENV)/bin/normlab-plot results/runs/blowup --out results/figures/blowup

images-per-gpu: $(STAMP)
	for s in $(GPU_SWEEPS); do $(VENV)/bin/normlab-train -m +experiment=$$s || exit 1; done
	$(VENV)/bin/normlab-plot $(addprefix results/runs/,$(GPU_SWEEPS)) --out results/figures/images_per_gpu

# The four seed-question studies in one set of figures: FC and conv nets on one values-per-channel scale.
SEED_STUDIES := $(filter seed_question_%,$(STUDIES))
overview: $(STAMP)
	$(VENV)/bin/normlab-plot $(addprefix results/runs/,$(SEED_STUDIES)) --out results/figures/seed_question_all

# The verdicts over the committed studies (not the quick default, which is not converged).
claims: $(STAMP)
	$(VENV)/bin/normlab-claims $(addprefix results/runs/,$(SWEEPS)) --out results/claims.md

# Two pytest workers (pytest-xdist), one per core: most of the suite's time is in the runs its
# end-to-end tests start, which are single-threaded Python. Tests that share a costly session
# fixture (marked xdist_group) run on one worker, so the fixture is built once.
TEST_JOBS ?= 2
test: $(STAMP)
	$(VENV)/bin/pytest -q -n $(TEST_JOBS) --dist loadgroup

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
