# cnnopt: `make run` and `make test` do all the set-up on a fresh machine (Python 3.11+, pip).
#   make run  [DATA_DIR=../shared/data/fashion-mnist] [WORKERS=4] [STUDY=studies/x.py] [ARGS='--n-trials 6']
#   make test [PYTEST_ARGS='-k storage']
#   make gpu-check [DATA_DIR=../shared/data/fashion-mnist]   (CUDA machines: writes runs/gpu-check.json)
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

.PHONY: install run test lint format clean gpu-check gpu-final chaos chaos-quick

# The stamp is rebuilt when pyproject.toml changes, so new dependencies get installed.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/cnnopt run $(STUDY) --workers $(WORKERS) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# GPU bench rows, a 2-worker study, export and `cnnopt train --reproduce` on the GPU: one JSON
# summary. Without CUDA it stops at once with one line (cnnopt/bench/gpucheck.py).
# An offline GPU machine whose Python already has cnnopt's dependencies (torch, optuna, ...) runs
# the check with that Python and this checkout on PYTHONPATH; anywhere else it uses the venv.
GPU_CHECK_ARGS = -m cnnopt.bench.gpucheck --data-dir $(or $(DATA_DIR),../shared/data/fashion-mnist)
gpu-check:
	@if PYTHONPATH=$(CURDIR) $(PYTHON) -c 'import torch, torchvision, optuna, sqlalchemy, plotly, click, rich, yaml' 2>/dev/null; then \
	  echo "gpu-check: using $(PYTHON) with this checkout on PYTHONPATH"; \
	  PYTHONPATH=$(CURDIR) $(PYTHON) $(GPU_CHECK_ARGS) $(GPU_CHECK_EXTRA); \
	else \
	  $(MAKE) install && $(BIN)/python $(GPU_CHECK_ARGS) $(GPU_CHECK_EXTRA); \
	fi

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
	$(BIN)/ruff check cnnopt tests studies
	$(BIN)/ruff format --check cnnopt tests studies

format: install
	$(BIN)/ruff format cnnopt tests studies
	$(BIN)/ruff check --fix cnnopt tests studies

clean:
	rm -rf $(VENV) .pytest_cache
