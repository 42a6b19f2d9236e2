# finetune-assets: `make demo` (one whole cycle on embedded defaults), `make test` (the suite), `make dev` (UI).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export FINETUNE_CONFIG ?= $(CURDIR)/pipeline_config.yaml

.PHONY: install demo dev test lint typecheck services bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# Everything the demo and the tests need, from scratch. torch is capped below 2.14 in pyproject.toml so pip
# takes the CPU wheel; the stamp re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,dev]'
	touch $@

install: $(VENV)/.installed

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/finetune-assets demo

dev: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

lint: install
	$(BIN)/ruff check finetune_assets finetune_assets_tests bench
	$(BIN)/ruff format --check finetune_assets finetune_assets_tests bench

typecheck: install
	$(BIN)/mypy finetune_assets

# Integration tests need Postgres on loopback; start the installed cluster when it is not answering.
services:
	@pg_isready -h 127.0.0.1 -p 5432 -q || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && exit 0; sleep 1; done; \
	  echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1

test: install lint typecheck services $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster definitions validate -w workspace.yaml
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=600

bench: install
	$(BIN)/python bench/definitions_load.py
	$(BIN)/python bench/demo_end_to_end.py

clean:
	rm -rf .state .dagster_home .pytest_cache .mypy_cache .ruff_cache
