# The project's commands. `make test` is the README's test command and what .ci/run runs:
# it creates .venv if needed, installs the project with its test extras, then lints and tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install browser test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'

# The browser tests need the distribution's Chromium (scripts/ensure-chromium installs it).
browser:
	scripts/ensure-chromium

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared runner api

test: install browser
	$(BIN)/ruff check .
	$(BIN)/mypy shared runner api
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
