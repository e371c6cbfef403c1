# spoolbox: the two set-up commands of the README.
#   make demo  - create .venv, install spoolbox with the demo extra, run the demo on the
#                embedded default
#   make test  - create .venv, install spoolbox with its test and dev extras, run lint,
#                types and tests
#   make mutation MODULE=policy - mutation-test one core module (docs/testing.md)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck pytest bench-lag mutation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The test suite's extra and the dev tools (ruff, mypy, mutmut): what `make test` runs.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $@ $(VENV)/.installed-demo

# The demo's extra only (a venv that has the test extra has it too).
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $@

demo: $(VENV)/.installed-demo
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

# Mutation testing of the core's decision modules; not part of `make test` (slow).
# MODULE= one or more of the keys `$(BIN)/python scripts/mutation.py --list` shows.
mutation: $(VENV)/.installed
	$(BIN)/python scripts/mutation.py $(MODULE)

clean:
	rm -rf $(VENV) build src/*.egg-info .mypy_cache .pytest_cache .ruff_cache mutants
