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
	$(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The corpus: $STEP_CORPUS, else the shared STEP-35 next to the checkout, else one rebuilt from
# its Debian sources into data/step35 (network access to a Debian mirror needed, ~430 MB).
CORPUS := $(or $(STEP_CORPUS),$(wildcard ../shared/corpus/step35),data/step35)
data/step35: | $(STAMP)
	$(BIN)/step-model corpus build data/step35

# The default simulation on real data: eight institutions, 23 EU languages, non-IID
# (examples/sim-eu8.yaml) on Flower's simulation engine; prints where the plot is.
sim: $(STAMP) $(filter data/step35,$(CORPUS))
	STEP_CORPUS=$(CORPUS) $(BIN)/step-sim --config examples/sim-eu8.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
