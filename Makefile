# halo_lab: every target creates the virtual environment on first use.
# TORCH picks the torch build: the default resolves to the CPU wheel on CPU-only machines that carry one
# locally and to PyPI's CUDA build elsewhere; e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
ARGS   ?=
# test processes (pytest-xdist, whole files per process; 0 = one process): the interpreted Triton tests are
# single-threaded Python, so two processes on two cores take the suite from ~15.5 to ~9.5 min
TEST_JOBS ?= 2
STAMP  := $(VENV)/.installed

.PHONY: help install train sweep-baseline sweep-ablation sweep-needle sweep-mqar report eval bench test test-full lint format clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,compat,hf]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install halo_lab with dev tools

train: $(STAMP)  ## default experiment: tiny HALO-S on Shakespeare (ARGS="key=value ...")
	$(PY) -m halo_lab.train $(ARGS)

sweep-baseline: $(STAMP)  ## HALO-S vs dense sweep
	$(PY) -m halo_lab.train -m +experiment=baseline $(ARGS)

sweep-ablation: $(STAMP)  ## graph-component ablation sweep
	$(PY) -m halo_lab.train -m +experiment=ablation $(ARGS)

sweep-needle: $(STAMP)  ## needle-in-a-haystack sweep
	$(PY) -m halo_lab.train -m +experiment=needle $(ARGS)

sweep-mqar: $(STAMP)  ## multi-query associative recall sweep
	$(PY) -m halo_lab.train -m +experiment=mqar $(ARGS)

# DIR: the sweep to report on (default: the newest one under outputs/multirun/)
DIR    ?= $(shell ls -dt outputs/multirun/*/*/ 2>/dev/null | head -1)
report: $(STAMP)  ## report.md + plots of a sweep (DIR=outputs/multirun/<experiment>/<time>, default newest)
	@test -n "$(DIR)" || { echo "make report: no sweep under outputs/multirun/: run a sweep-* target or pass DIR=..."; exit 2; }
	$(PY) -m halo_lab.report $(DIR) $(ARGS)

eval: $(STAMP)  ## evaluate a model: make eval ARGS="source=outputs/train/<run> [data=... | file=book.txt]"
	$(PY) -m halo_lab.eval $(ARGS)

bench: $(STAMP)  ## speed/memory benchmark (quick CPU mode without a GPU)
	$(PY) -m halo_lab.bench $(ARGS)

test: $(STAMP)  ## fast test suite (what CI runs)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_JOBS) --dist loadfile $(ARGS)

test-full: $(STAMP)  ## every test, slow end-to-end ones included
	HALO_TEST_OVERFLOW_CHECKS=1 $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile $(ARGS)

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check halo_lab tests
	$(PY) -m ruff format --check halo_lab tests

format: $(STAMP)  ## ruff autofix + format
	$(PY) -m ruff check --fix halo_lab tests
	$(PY) -m ruff format halo_lab tests

clean:  ## remove caches and outputs (keeps .venv)
	rm -rf .pytest_cache .ruff_cache outputs/* wandb lightning_logs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	touch outputs/.gitkeep
