# The README's commands. Each installs what it needs on a fresh Debian machine (as root).
SHELL := /bin/bash
PY := .venv/bin/python
STACK ?= dev

.PHONY: plan test lint unit bench clean

.venv/.installed: requirements.txt requirements-dev.txt
	command -v python3 >/dev/null || (apt-get update && apt-get install -y python3)
	python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || \
		(apt-get update && apt-get install -y python3-venv)
	python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Main job (until the local lab lands): what `pulumi up` would create for a stack, offline.
plan: .venv/.installed
	$(PY) -m fleet validate $(STACK)
	$(PY) -m fleet plan $(STACK)

lint: .venv/.installed
	$(PY) -m ruff check infra components fleet tests
	$(PY) -m ruff format --check infra components fleet tests
	$(PY) -m mypy infra components fleet

unit: .venv/.installed
	$(PY) -m pytest -q

# All tests: linters, type checks, the whole suite.
test: lint unit

# Wall time and peak memory of `plan` for every stack (a benchmark, not a test).
bench: .venv/.installed
	$(PY) tests/bench_plan.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
