# physfm — the two commands a newcomer needs: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export OMP_NUM_THREADS ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: setup quickstart lint test test-fast bench clean

setup: $(STAMP)

# torch is installed first and pinned: on these machines 2.13.0 is a local CPU build, while a plain
# `torch` requirement would pull several GB of CUDA wheels. The pin is also a constraint for the rest,
# so no dependency can swap torch. On a GPU cluster: make setup TORCH="torch==2.13.0 --index-url ...".
TORCH ?= torch==2.13.0
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	$(PIP) install -q -e ".[dev,baselines]" -c $(VENV)/constraints.txt
	touch $(STAMP)

quickstart: setup
	$(VENV)/bin/physfm quickstart --out runs/quickstart

# ruff keeps the code uniform (its config is in pyproject.toml); `make test` fails on a lint or format finding.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

# Every CPU bench with its defaults (each prints its JSON line last); bench/gpu_check.sh needs a GPU.
# bench/ also holds modules the benches share (no __main__): the pipeline, the FNO and U-Net baselines,
# the multi-process helpers; they are not benches.
BENCH_SHARED := bench/gpu_check.py bench/pipeline.py bench/fno_baseline.py bench/unet_baseline.py bench/processes.py
bench: setup
	for b in $(filter-out $(BENCH_SHARED),$(wildcard bench/*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
