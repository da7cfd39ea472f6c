# Developer entry points. `make test` does all set-up on a fresh machine and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint format test services bench clean

$(BIN)/autopack: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/autopack

install: $(BIN)/autopack

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

services:
	.ci/services

test: install services
	$(BIN)/pytest -n 2

# Every benchmark (about 4-6 minutes): the system benchmark (BENCH_ARGS=--quick to shorten it), which
# prints its table and rewrites the generated block of bench/results-system.md, then the dashboard
# benchmark on 1,000,000 metric rows, which prints its table.
$(VENV)/.bench-extra: $(BIN)/autopack
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-extra services
	$(BIN)/python -m bench.system --write-results $(BENCH_ARGS)
	$(BIN)/python -m bench.dashboard

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
