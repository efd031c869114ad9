# Two commands for a newcomer: `make run` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Local runs are development runs unless told otherwise; the secret lives in var/ (not in git).
RUN_ENV := DEBUG=$${DEBUG:-true} SECRET_KEY=$${SECRET_KEY:-$$(cat var/secret_key)}

.PHONY: install run test lint bench-ingest bench-dashboard bench-budget clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

var/secret_key:
	mkdir -p var
	$(PYTHON) -c "import secrets; print(secrets.token_urlsafe(50))" > $@

run: install var/secret_key
	$(RUN_ENV) $(BIN)/python manage.py migrate --no-input -v0
	$(RUN_ENV) $(BIN)/python manage.py collectstatic --no-input -v0
	$(RUN_ENV) $(BIN)/python manage.py sync_prices
	$(RUN_ENV) $(BIN)/python manage.py bootstrap_demo --base-url http://$(HOST):$(PORT)
	@# The Celery worker (with beat) runs beside the web server and stops with it.
	$(RUN_ENV) $(BIN)/celery -A llmcost_project worker --beat --concurrency 2 --loglevel INFO \
	    --schedule var/celerybeat-schedule > var/celery.log 2>&1 & worker=$$!; \
	trap 'kill $$worker 2>/dev/null' EXIT INT TERM; \
	echo "  Celery worker + beat: pid $$worker, log var/celery.log"; \
	$(RUN_ENV) $(BIN)/python manage.py runserver $(HOST):$(PORT)

test: install
	$(BIN)/pytest

# mypy's Django plugin imports the settings, which need a secret: any value does for type checking.
lint: install
	$(BIN)/ruff check .
	SECRET_KEY=type-checking-only-0123456789abcdef $(BIN)/mypy

bench-ingest: install
	$(BIN)/python tests/benchmarks/bench_ingest.py

bench-dashboard: install
	$(BIN)/python tests/benchmarks/bench_dashboard.py

bench-budget: install
	$(BIN)/python tests/benchmarks/bench_budget.py

clean:
	rm -rf $(VENV) var staticfiles
