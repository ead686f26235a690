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

# one pytest-xdist worker per core (at most 2: the suite is sized for the 2-core CI machine; TEST_WORKERS=0 runs
# it in one process); worksteal: an idle worker takes queued tests from the busy one (the learning tests are long)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 2 ] && n=2; echo $$n)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

bench: $(STAMP)
	$(PY) -W ignore -m pipelines bench $(BENCH_ARGS)

mutate: $(STAMP)
	$(PY) -m tests.mutate $(MUTATE_ARGS)

# ruff over every package, mypy over the typed core (networks/ and pipelines/io/); the linters are not
# requirements of the product: requirements-dev.txt is installed on first use
lint: $(STAMP)
	@$(PY) -m ruff --version >/dev/null 2>&1 && $(PY) -m mypy --version >/dev/null 2>&1 || \
		$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m ruff check networks pipelines bench tests
	$(PY) -m mypy networks pipelines/io

clean:
	rm -rf demo_run .pytest_cache
