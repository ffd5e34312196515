# The two commands of the README. Each creates .venv and installs veil with all its
# extras the first time (or when pyproject.toml changes), then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.veil-installed
VEIL_SHARED ?= $(abspath ../shared)
export VEIL_SHARED
IMAGENETTE := $(wildcard $(VEIL_SHARED)/data/imagenette/val)

.PHONY: demo test lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/veil demo --out demo-output $(if $(IMAGENETTE),--data $(VEIL_SHARED)/data/imagenette)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports  # the layer and no-cycle contracts in pyproject.toml
	$(BIN)/mypy          # src/veil, configured in pyproject.toml
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf demo-output .pytest_cache .ruff_cache .mypy_cache
