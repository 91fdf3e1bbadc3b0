# Every target creates the virtual environment first when it is missing, so each is one command
# on a fresh machine. The stamp files re-run pip only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(PIP) install -e '.[dev]'
	touch $@

$(VENV)/.bench: pyproject.toml $(VENV)/.dev
	$(PIP) install -e '.[dev,bench]'
	touch $@

demo: $(VENV)/.runtime
	$(BIN)/segwise demo --out demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest

LINTED := src tests $(wildcard bench)

lint: $(VENV)/.dev
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

bench: $(VENV)/.bench
	@ls bench/*.py >/dev/null 2>&1 && for script in bench/*.py; do $(BIN)/python $$script || exit 1; done \
		|| echo "no benchmarks yet"

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache
