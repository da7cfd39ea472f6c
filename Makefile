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

# System benchmark (about 3-5 minutes; BENCH_ARGS=--quick for about 2): prints the figures and
# rewrites the generated block of bench/results-system.md.
bench: install services
	$(BIN)/python -m bench.system --write-results $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
