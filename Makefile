# ct4 identity recovery: `make demo` runs the product end to end on demo data, `make test` runs
# every test. Both set themselves up (venv, packages, embedded PostgreSQL) on a fresh machine.

# The first interpreter that really runs and is 3.11+ (a pyenv shim may exist and still fail).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; done)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test check-migrations check-schema bench bench-setup clean-data help

help:
	@echo "make demo   - set up, then run the whole pipeline on a generated demo park"
	@echo "make test   - set up, then run the whole test suite"
	@echo "make bench  - run the benchmarks in bench/ (minutes; prints figures)"

$(STAMP): requirements.txt
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required (none found; set PYTHON=...)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required (set PYTHON=...)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py run_demo

test: $(STAMP)
	$(PY) -m pytest

check-migrations: $(STAMP)
	$(PY) manage.py makemigrations --check --dry-run

# The OpenAPI schema must generate without a single warning.
check-schema: $(STAMP)
	$(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null

bench: $(STAMP)
	$(PY) bench/import_speed.py

# Bench-only packages (Splink baseline, FEBRL datasets) into the same venv; requirements.txt pins stay as they are.
bench-setup: $(STAMP)
	$(PY) -m pip install --quiet -r bench/requirements.txt
	$(PY) -m pip check

clean-data:
	rm -rf .data
