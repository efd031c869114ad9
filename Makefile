# Two commands for a newcomer: `make run` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Local runs are development runs unless told otherwise; the secret lives in var/ (not in git).
RUN_ENV := DEBUG=$${DEBUG:-true} SECRET_KEY=$${SECRET_KEY:-$$(cat var/secret_key)}

.PHONY: install run serve test lint bench-ingest clean

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
	$(RUN_ENV) $(BIN)/python manage.py runserver $(HOST):$(PORT)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .

bench-ingest: install
	$(BIN)/python tests/benchmarks/bench_ingest.py

clean:
	rm -rf $(VENV) var staticfiles
