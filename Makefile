# TuneForge developer commands. Two matter most:
#   make run    create .venv if needed, install everything, start `tuneforge serve` (embedded default)
#   make test   install, then ruff + mypy + import contracts + pytest (the whole suite)
# Anything else a command needs goes in ARGS, e.g. `make run ARGS="--port 8000"`.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Exactly this torch, installed first: the CPU build lies on disk here, and any range admitting a newer
# release would make pip pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PIP_FLAGS ?= --disable-pip-version-check --no-input
PACKAGES := app engine worker serve tuneforge
STAMP := $(VENV)/.tuneforge-installed
ARGS ?=
PYTEST_ARGS ?=

export PIP_NO_INPUT := 1

.PHONY: help install run serve test lint fmt migrate bench api-smoke clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# The venv's interpreter is the marker that the venv exists; it is created once, with a version check first.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "TuneForge needs Python >= 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml changes (or the venv is new); the editable install picks up code edits.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install $(PIP_FLAGS) '$(TORCH_SPEC)'
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[train,dev]'
	@touch $@

install: $(STAMP) ## create .venv and install tuneforge with the train and dev extras

run: $(STAMP) ## start `tuneforge serve` on the embedded default (SQLite + local files under ./data)
	$(BIN)/tuneforge serve $(ARGS)

serve: run

test: $(STAMP) ## the whole suite: ruff, mypy, import contracts, pytest (no tests collected = failure)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(PACKAGES)  # strict: see [tool.mypy] in pyproject.toml
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff, mypy and the import contracts, without the tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(PACKAGES)  # strict: see [tool.mypy] in pyproject.toml
	$(BIN)/lint-imports

fmt: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

migrate: $(STAMP) ## apply the Alembic migrations to TUNEFORGE_DATABASE_URL (or the embedded SQLite database)
	$(BIN)/tuneforge migrate $(ARGS)

bench: $(STAMP) ## run every bench/*.py; each prints its ratio against a same-run baseline on its last line
	@shopt -s nullglob; found=0; \
	for f in bench/*.py; do \
	  case "$$(basename "$$f")" in _*) continue;; esac; \
	  found=1; echo "== $$f"; $(BIN)/python "$$f" $(ARGS); \
	done; \
	if [ "$$found" = 0 ]; then echo "no benchmarks in bench/"; fi

api-smoke: ## rehearse the Dockerfile's API image without Docker: wheel, base deps only, no torch, /ready
	scripts/api-image-smoke.sh $(PYTHON)

clean: ## remove caches and build leftovers (keeps .venv and data/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .import_linter_cache build *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## also remove .venv (data/ is never touched)
	rm -rf $(VENV)
