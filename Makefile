# The two commands of the README work on a fresh machine: `make sim` and `make test`.
# torch==2.13.0 is installed first (a CPU wheel); the project's torch range then accepts it,
# so pip never pulls a multi-GB CUDA build.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: install test lint sim clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The corpus: $STEP_CORPUS, else the shared STEP-35 next to the checkout, else one rebuilt from
# its Debian sources into data/step35 (network access to a Debian mirror needed, ~430 MB).
CORPUS := $(or $(STEP_CORPUS),$(wildcard ../shared/corpus/step35),data/step35)
RUN := runs/sim-$(shell date +%Y%m%d-%H%M%S)

data/step35: | $(STAMP)
	$(BIN)/step-model corpus build data/step35

# The default run on real data: until the federation lands (step-sim), the centralized model
# every federated run is compared against: a 2048-token BPE, then ~9 minutes of training on the
# 24 EU languages (2 CPU cores), evaluated per language.
sim: $(STAMP) $(filter data/step35,$(CORPUS))
	$(BIN)/step-model tokenizer train --corpus $(CORPUS) --vocab-size 2048 --out $(RUN)/tokenizer.json
	$(BIN)/step-model train --corpus $(CORPUS) --tokenizer $(RUN)/tokenizer.json --languages eu \
		--preset debug --steps 1100 --batch-size 64 --seq-len 128 --lr 3e-3 --warmup-steps 50 \
		--eval-every 110 --out $(RUN)/model
	@echo "run folder: $(RUN)"

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
