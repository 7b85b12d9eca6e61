# cnnopt: `make run` and `make test` do all the set-up on a fresh machine (Python 3.11+, pip).
#   make run  [DATA_DIR=../shared/data/fashion-mnist] [WORKERS=4] [STUDY=studies/x.py] [ARGS='--n-trials 6']
#   make test [PYTEST_ARGS='-k storage'] [PYTEST_WORKERS=2]
#   make gpu-check [DATA_DIR=../shared/data/fashion-mnist]   (CUDA machines: writes runs/gpu-check.json)
#   make gpu-wheels   (here, online: the wheels an offline GPU machine lacks -> gpu-wheels/)
#   make gpu-final [DATA_DIR=...] [STUDY_SEED=1]   (CUDA: study, export, final training x3 seeds -> runs/gpu-final.json)
#   make chaos [CHAOS_ARGS='--seed 1']   (many runners under faults, direct and via the proxy: docs/chaos.md)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STUDY ?= studies/fashion_cnn_bn.py
WORKERS ?= 4
DATA_DIR ?=
ARGS ?=
STUDY_SEED ?= 0
PYTEST_ARGS ?=
# pytest processes (pytest-xdist): the suite's process-level tests leave a core idle while they
# wait on their subprocesses, so 2 fill a 2-core machine; PYTEST_WORKERS=0 runs it in one process
PYTEST_WORKERS ?= 2

.PHONY: install run test lint format clean gpu-check gpu-final gpu-wheels gpu-site chaos chaos-quick

# The stamp is rebuilt when pyproject.toml changes, so new dependencies get installed.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/cnnopt run $(STUDY) --workers $(WORKERS) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(ARGS)

test: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# GPU bench rows, a 2-worker study, export and `cnnopt train --reproduce` on the GPU: one JSON
# summary. Without CUDA it stops at once with one line (cnnopt/bench/gpucheck.py).
# An offline GPU machine whose Python already has cnnopt's dependencies (torch, optuna, ...) runs
# the check with that Python and this checkout on PYTHONPATH. One that has only torch & co. gets
# the rest from the gpu-wheels/ folder (`make gpu-wheels`, made beforehand on a machine with
# PyPI), installed with no network into $(GPU_SITE) and put on PYTHONPATH ahead of the checkout.
# Anywhere else it uses the venv.
GPU_CHECK_ARGS = -m cnnopt.bench.gpucheck --data-dir $(or $(DATA_DIR),../shared/data/fashion-mnist)
GPU_IMPORTS = import torch, torchvision, optuna, sqlalchemy, plotly, click, rich, yaml
GPU_PATH = $(CURDIR)/$(GPU_SITE):$(CURDIR)
gpu-check:
	@if ! PYTHONPATH=$(GPU_PATH) $(PYTHON) -c '$(GPU_IMPORTS)' 2>/dev/null && test -d $(GPU_WHEELS); then \
	  $(MAKE) --no-print-directory gpu-site; \
	fi
	@if PYTHONPATH=$(GPU_PATH) $(PYTHON) -c '$(GPU_IMPORTS)' 2>/dev/null; then \
	  echo "gpu-check: using $(PYTHON) with $(GPU_PATH) on PYTHONPATH"; \
	  PYTHONPATH=$(GPU_PATH) $(PYTHON) $(GPU_CHECK_ARGS) $(GPU_CHECK_EXTRA); \
	else \
	  $(MAKE) install && $(BIN)/python $(GPU_CHECK_ARGS) $(GPU_CHECK_EXTRA); \
	fi

# The wheels listed in gpu-wheels.txt, for CPython $(GPU_PY) on x86-64 Linux (about 30 MiB).
GPU_WHEELS ?= gpu-wheels
GPU_SITE ?= .gpu-site
GPU_PY ?= 3.12
GPU_PY_TAG = cp$(subst .,,$(GPU_PY))
GPU_TARGET = --only-binary=:all: --python-version $(GPU_PY) --implementation cp --abi $(GPU_PY_TAG) \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
PIP = $(PYTHON) -m pip --disable-pip-version-check
gpu-wheels:
	$(PIP) download --quiet --no-deps $(GPU_TARGET) --dest $(GPU_WHEELS) -r gpu-wheels.txt
	@du -sh $(GPU_WHEELS)

# install them from the folder alone into $(GPU_SITE): no index, no network, and --isolated so no
# pip configuration adds other sources; --no-compile: Python compiles what it imports anyway
gpu-site:
	$(PIP) --isolated install --quiet --no-index --find-links $(GPU_WHEELS) --no-deps $(GPU_TARGET) \
	  --no-compile --upgrade --target $(GPU_SITE) -r gpu-wheels.txt

# the README's end-to-end path at full size (minutes on a GPU, hours on a CPU)
gpu-final:
	@$(MAKE) --no-print-directory gpu-check GPU_CHECK_EXTRA="--final --study-seed $(STUDY_SEED)"

# The chaos run (docs/chaos.md): 3 runners x 3 workers on one PostgreSQL study (a throw-away
# server) under SIGKILLed workers and runners and database restarts, then the same through the
# storage proxy, restarted too. Exits non-zero if a trial is lost, duplicated or wrongly failed.
# chaos: the full size (300+ trials, 70 faults each); chaos-quick: the CI size (minutes).
CHAOS_ARGS ?=
chaos: install
	$(BIN)/python -m cnnopt.bench.chaos --out runs/chaos-direct.json $(CHAOS_ARGS)
	$(BIN)/python -m cnnopt.bench.chaos --proxy --out runs/chaos-proxy.json $(CHAOS_ARGS)

chaos-quick: install
	$(BIN)/python -m cnnopt.bench.chaos --quick --out runs/chaos-quick-direct.json $(CHAOS_ARGS)
	$(BIN)/python -m cnnopt.bench.chaos --quick --proxy --out runs/chaos-quick-proxy.json $(CHAOS_ARGS)

lint: install
	$(BIN)/ruff check cnnopt tests studies benchmarks
	$(BIN)/ruff format --check cnnopt tests studies benchmarks

format: install
	$(BIN)/ruff format cnnopt tests studies benchmarks
	$(BIN)/ruff check --fix cnnopt tests studies benchmarks

clean:
	rm -rf $(VENV) .pytest_cache $(GPU_SITE)
