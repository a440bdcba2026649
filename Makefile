# ct4 identity recovery: `make demo` runs the product end to end on demo data, `make test` runs
# every test. Both set themselves up (venv, packages, embedded PostgreSQL) on a fresh machine.

# The first interpreter that really runs and is 3.11+ (a pyenv shim may exist and still fail).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; done)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint check-migrations check-schema bench bench-setup clean-data help

help:
	@echo "make demo   - set up, then run the whole pipeline on a generated demo park"
	@echo "make test   - set up, then run the whole test suite"
	@echo "make lint   - ruff: the rules in pyproject.toml (the layers included: identity never imports recovery)"
	@echo "make serve  - try the production set-up: gunicorn + WhiteNoise, DEBUG off, http://localhost:8000/"
	@echo "make check-alerts - promtool: the alert rules and their unit tests"
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

# Ruff with the rules of pyproject.toml: unused code, import order, local imports that give no reason,
# and the layers (identity never imports recovery); then no import cycles between the product's
# modules (ruff's import graph, checked by .ci/import_cycles.py: ruff has no lint rule for cycles).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff analyze graph ct4site identity recovery 2>/dev/null | $(PY) .ci/import_cycles.py

# A try-out of the production set-up on the embedded database (or DATABASE_URL): the production
# settings (DEBUG off) with a generated secret key, gunicorn, static files from WhiteNoise. Plain
# HTTP on 127.0.0.1:8000, so no HTTPS redirect and no Secure-only cookies. Deploying: docs/deploy.md.
SERVE_ENV = DJANGO_SETTINGS_MODULE=ct4site.settings_production SECURE_SSL_REDIRECT=false SECURE_COOKIES=false \
	SECRET_KEY="$$(cat .data/serve-secret-key)" WEB_CONCURRENCY="$${WEB_CONCURRENCY:-2}"

serve: $(STAMP)
	@mkdir -p .data
	@test -s .data/serve-secret-key || $(PY) -c 'import secrets; print(secrets.token_urlsafe(64))' > .data/serve-secret-key
	$(SERVE_ENV) $(PY) manage.py migrate --noinput -v 0
	$(SERVE_ENV) $(PY) manage.py collectstatic --noinput -v 0
	@echo "ct4 at http://localhost:8000/ (health: /healthz, /readyz; metrics: /metrics). Ctrl-C stops it."
	$(SERVE_ENV) exec $(VENV)/bin/gunicorn -c ct4site/deploy/gunicorn.conf.py ct4site.wsgi

check-migrations: $(STAMP)
	$(PY) manage.py makemigrations --check --dry-run

# The OpenAPI schema must generate without a single warning.
check-schema: $(STAMP)
	$(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null

# The alert rules parse, and each behaves as its unit tests say (promtool: Debian's `prometheus` package).
check-alerts:
	@command -v promtool >/dev/null || { echo "promtool is missing: apt-get install prometheus"; exit 1; }
	promtool check rules ct4site/deploy/alerts.yml
	promtool test rules ct4site/deploy/alerts.test.yml

bench: $(STAMP)
	$(PY) bench/import_speed.py

# Bench-only packages (Splink baseline, FEBRL datasets) into the same venv; requirements.txt pins stay as they are.
bench-setup: $(STAMP)
	$(PY) -m pip install --quiet -r bench/requirements.txt
	$(PY) -m pip check

clean-data:
	rm -rf .data
