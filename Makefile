# The README's two commands: `make demo` and `make test`. Each target first builds .venv from requirements.txt
# when it is missing or older than requirements.txt / pyproject.toml.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench lint mutate clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PYTHONUNBUFFERED=1 $(PY) -W ignore -m pipelines demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -W ignore -m pipelines bench $(BENCH_ARGS)

mutate: $(STAMP)
	$(PY) -m tests.mutate $(MUTATE_ARGS)

lint: $(STAMP)
	$(PY) -m compileall -q networks pipelines bench tests

clean:
	rm -rf demo_run .pytest_cache
