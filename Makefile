# finetune-assets: `make demo` (one whole cycle on embedded defaults), `make test` (the suite, as CI runs it),
# `make test-fast` (the developer's loop), `make dev` (UI).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export FINETUNE_CONFIG ?= $(CURDIR)/pipeline_config.yaml

.PHONY: install demo dev test test-fast lint typecheck services browser bench clean

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

# Integration tests need Postgres and Redis on loopback; start the installed servers when they do not answer.
services:
	@pg_isready -h 127.0.0.1 -p 5432 -q || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && exit 0; sleep 1; done; \
	  echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 -::1 \
	  --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
	@for i in $$(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && exit 0; sleep 1; done; \
	  echo "Redis is not reachable on 127.0.0.1:6379" >&2; exit 1

# The browser tests (finetune_assets_tests/ui/) drive Debian's Chromium through Playwright: Playwright's own
# browser download needs the internet, Debian's package comes from the package mirror. Installed once.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo -E) apt-get install -y -qq chromium >/dev/null

browser: $(CHROMIUM)

test: install lint typecheck services browser $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster definitions validate -w workspace.yaml
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=600

# The developer's loop, under 90 s on 2 cores: no service, no browser, no training, one pytest worker per core.
# Tests that use a service fixture or train are marked so by the root conftest and deselected here; the service
# URLs point at a closed port, so a test that reaches a service anyway fails instead of passing on a running one.
FAST_ENV := FINETUNE_TEST_POSTGRES_URL=postgresql+psycopg2://nobody@127.0.0.1:9/none \
	FINETUNE_TEST_REDIS_URL=redis://127.0.0.1:9/0
test-fast: install
	$(BIN)/ruff check finetune_assets finetune_assets_tests bench
	$(FAST_ENV) $(BIN)/python -m pytest -q -p no:cacheprovider --timeout=120 -n auto \
	  -m "not slow and not browser and not integration"

bench: install services
	$(BIN)/python bench/definitions_load.py
	$(BIN)/python bench/demo_end_to_end.py
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/p3_assignment.py
	$(BIN)/python bench/p4_outcome_analysis.py --rows 10000000
	$(BIN)/python bench/p1_collection.py
	$(BIN)/python bench/p2_sensor_tick.py
	$(BIN)/python bench/p5_openai_preflight.py
	$(BIN)/python bench/p6_eval_concurrency.py

clean:
	rm -rf .state .dagster_home .pytest_cache .mypy_cache .ruff_cache
