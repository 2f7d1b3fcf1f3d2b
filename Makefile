# Staria: every target installs what it needs into .venv first, so on a fresh machine
# `make demo` and `make test` are the only two commands a user types.

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch==2.13.0 is a CPU wheel on these machines; an unpinned torch pulls a multi-GB CUDA build.
TORCH_CPU ?= torch==2.13.0
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
PYTEST_ARGS ?=
CLUSTER ?= slurm
EXP ?= smoke
DEMO_RUNS ?= runs
# Generation and evaluation: CKPT a checkpoint, N samples, DATA reference data (MIDI folder or
# indexed split), CLASSIFIER a classification checkpoint, GEN a generated folder, RUN an
# evaluation folder; GEN_ARGS passes further Hydra overrides to staria-generate.
N          ?= 4
GEN_NAME   ?= make
GEN        ?= $(patsubst %/checkpoints/,%,$(dir $(CKPT)))/generated/$(GEN_NAME)
GEN_ARGS   ?=
CLASSIFIER ?=

.DEFAULT_GOAL := help
.PHONY: help install test lint format demo recipe bench gpu-check fuzz sweep slurm-up slurm-down clean generate eval stats report experiment

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

DEMO_RECIPE = $(DEMO_RUNS)/demo
DEMO_VAL = "$$(ls -td data_cache/dataset_synthetic_demo_*_val | head -1)"
# The staged recipe: a contrastive encoder run, a decoder-only run (or none), the Staria preset
# at stage A, B, C; ARGS are Hydra overrides for every phase.
ENCODER ?= demo_encoder
DECODER ?= demo_unconditional
STARIA  ?= demo
RECIPE_RUNS ?= runs/recipe
ARGS ?=

demo: install ## the whole loop on synthetic data: the staged recipe (contrastive encoder, unconditional decoder, Staria A/B/C), the baseline -> generate -> evaluate -> report
	@echo "== [1/5] tokenizer round trip on a built-in example"
	$(VENV)/bin/staria-tokenize roundtrip
	@echo "== [2/5] the staged recipe: contrastive encoder, unconditional decoder, Staria stages A, B, C (synthetic data is made and indexed on first use)"
	$(PY) -m staria.research.recipe --encoder demo_encoder --decoder demo_unconditional --staria demo --runs-dir $(DEMO_RECIPE)
	@echo "== [3/5] the decoder-only baseline (snippets inline as a prompt)"
	$(VENV)/bin/staria-train experiment=demo_baseline hydra.run.dir=$(DEMO_RECIPE)/baseline
	@echo "== [4/5] generate and evaluate Staria stage C"
	$(MAKE) --no-print-directory eval CKPT=$(DEMO_RECIPE)/stage-C/checkpoints/last.ckpt N=$(N) DATA=$(DEMO_VAL)
	@echo "== [5/5] generate and evaluate the baseline"
	$(MAKE) --no-print-directory eval CKPT=$(DEMO_RECIPE)/baseline/checkpoints/last.ckpt N=$(N) DATA=$(DEMO_VAL)
	@echo "== done: open the two reports, $(DEMO_RECIPE)/stage-C/generated/$(GEN_NAME)/evaluation/report.html and $(DEMO_RECIPE)/baseline/generated/$(GEN_NAME)/evaluation/report.html"

recipe: install ## the staged recipe, resumable: ENCODER (contrastive) -> DECODER (decoder-only, or none) -> STARIA stage A, B, C under RECIPE_RUNS [ARGS=hydra overrides]
	$(PY) -m staria.research.recipe --encoder $(ENCODER) --decoder $(DECODER) --staria $(STARIA) --runs-dir $(RECIPE_RUNS) $(ARGS)

gpu-check: install ## full-size training step (bf16, flash/compile on and off, MFU), generation tokens/s on one GPU (< 8 min)
	timeout 480 $(PY) benchmarks/gpu_check.py

FUZZ_CASES ?= 100000
FUZZ_SEED  ?= 1
fuzz: install ## long differential fuzz of the MIDI reader against mido [FUZZ_CASES=100000 FUZZ_SEED=1]
	STARIA_FUZZ_CASES=$(FUZZ_CASES) STARIA_FUZZ_SEED=$(FUZZ_SEED) $(VENV)/bin/pytest -p no:cacheprovider -q -o timeout=0 tests/test_midi_fuzz.py

bench: install ## run every benchmark, each printing ratios against a same-run baseline
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

generate: install ## sample N pieces from CKPT into GEN (default <run>/generated/make)
	@test -n "$(CKPT)" || (echo "usage: make generate CKPT=runs/<name>/stage-<X>/checkpoints/last.ckpt [N=4]" && exit 1)
	$(VENV)/bin/staria-generate checkpoint=$(CKPT) num_samples=$(N) out_dir=$(GEN) $(GEN_ARGS)

eval: generate ## generate from CKPT, then metrics + HTML report in GEN/evaluation [DATA=, CLASSIFIER=]
	$(VENV)/bin/staria-eval samples $(GEN) $(if $(DATA),--reference $(DATA)) $(if $(CLASSIFIER),--classifier $(CLASSIFIER))

stats: install ## dataset statistics of DATA (one or more MIDI/generated/indexed folders) into STATS_OUT
	@test -n "$(DATA)" || (echo "usage: make stats DATA='folder [folder...]' [STATS_OUT=statistics]" && exit 1)
	$(VENV)/bin/staria-eval stats $(DATA) --out $(or $(STATS_OUT),statistics)

report: install ## rebuild report.html of the evaluation folder RUN
	@test -n "$(RUN)" || (echo "usage: make report RUN=<generated folder>/evaluation" && exit 1)
	$(VENV)/bin/staria-eval report $(RUN)

experiment: install ## does conditioning work? control, baseline, Staria scratch and staged, 3 seeds, on CPU: results/compare/ [ARGS=--scale gpu ...]
	$(PY) -m staria.research.compare $(ARGS)

sweep: install ## submit a sweep to SLURM, one array task per point: make sweep EXP=smoke ARGS='model.optimizer.lr=1e-4,3e-4'
	$(VENV)/bin/staria-train -m cluster=$(CLUSTER) experiment=$(EXP) $(ARGS)

slurm-up: ## install (apt) and start a local two-node SLURM cluster for the tests
	bash scripts/slurm/up.sh

slurm-down: ## stop exactly what slurm-up started
	bash scripts/slurm/down.sh

clean: ## remove tool caches and Hydra's default output folders (runs/, data_cache/ and .venv stay)
	rm -rf .pytest_cache .ruff_cache outputs multirun
