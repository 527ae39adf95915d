# make demo: serve the example on http://127.0.0.1:8000   make test: run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# A second interpreter for the newest Django (6.x needs Python >= 3.12).
PYTHON_LATEST ?= python3.12
VENV_LATEST ?= .venv-django6

.PHONY: install demo test test-sqlite test-django6 lint bench clean

$(BIN)/.installed: requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python manage.py migrate --no-input
	@echo "Serving the example on http://$(HOST):$(PORT)/"
	$(BIN)/daphne -b $(HOST) -p $(PORT) example_project.asgi:application

# The whole suite, against DATABASE_URL and REDIS_URL when they are set. Suites that
# need a missing backend skip with the reason, or fail when CI=true.
test: install
	$(BIN)/pytest $(PYTEST_ARGS)

# The suite on SQLite and the in-memory channel layer only.
test-sqlite: install
	env -u DATABASE_URL -u REDIS_URL $(BIN)/pytest -m "not postgres and not redis" $(PYTEST_ARGS)

$(VENV_LATEST)/.installed: requirements-dev.txt pyproject.toml
	$(PYTHON_LATEST) -m venv $(VENV_LATEST)
	$(VENV_LATEST)/bin/python -m pip install -q --upgrade pip
	$(VENV_LATEST)/bin/python -m pip install -q -r requirements-dev.txt "Django>=6.0,<6.2"
	touch $@

test-django6: $(VENV_LATEST)/.installed
	env -u DATABASE_URL -u REDIS_URL $(VENV_LATEST)/bin/pytest -m "not postgres and not redis" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/python manage.py makemigrations --check --dry-run

bench: install
	$(BIN)/python -m bench.flush_policy
	$(BIN)/python -m bench.compaction
	@case "$$DATABASE_URL" in postgres*) $(BIN)/python -m bench.flush_cost;; \
	*) echo "bench/flush_cost.py skipped: it needs DATABASE_URL (Postgres)";; esac
	@if [ -n "$$DATABASE_URL" ] && [ -n "$$REDIS_URL" ]; then $(BIN)/python -m bench.fanout; \
	else echo "bench/fanout.py skipped: it needs DATABASE_URL (Postgres) and REDIS_URL"; fi

clean:
	rm -rf $(VENV) $(VENV_LATEST) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
