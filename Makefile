# Staria: every target installs what it needs into .venv first, so on a fresh machine
# `make demo` and `make test` are the only two commands a user types.

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch==2.13.0 is a CPU wheel on these machines; an unpinned torch pulls a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test lint format demo bench slurm-up slurm-down clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install staria (editable) with its dev extra

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifneq ($(HAS_CUDA),yes)
	$(PY) -m pip install --quiet $(TORCH_CPU)
endif
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install ## run the test suite (SLURM tests need `make slurm-up` first)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install ## tokenize a built-in example and print a round-trip report
	$(VENV)/bin/staria-tokenize roundtrip $(MIDI)

bench: install ## run every benchmark, each printing ratios against a same-run baseline
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

slurm-up: ## install (apt) and start a local two-node SLURM cluster for the tests
	bash scripts/slurm/up.sh

slurm-down: ## stop exactly what slurm-up started
	bash scripts/slurm/down.sh

clean: ## remove caches and run outputs (not .venv)
	rm -rf .pytest_cache .ruff_cache outputs multirun
