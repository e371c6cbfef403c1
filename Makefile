# spoolbox: the two set-up commands of the README.
#   make demo  - create .venv, install spoolbox, run the demo on the embedded default
#   make test  - create .venv, install spoolbox with its test tools, run lint, types and tests
#   make mutation MODULE=policy - mutation-test one core module (docs/testing.md)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck pytest bench-lag mutation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m spoolbox.demo

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" >&2; exit $$rc

test: lint typecheck pytest

bench-lag: $(VENV)/.installed
	$(BIN)/python bench/foreground_lag.py

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Mutation testing of the core's decision modules; not part of `make test` (slow).
# MODULE= one or more of the keys `$(BIN)/python scripts/mutation.py --list` shows.
mutation: $(VENV)/.installed-dev
	$(BIN)/python scripts/mutation.py $(MODULE)

clean:
	rm -rf $(VENV) build src/*.egg-info .mypy_cache .pytest_cache .ruff_cache mutants
