# make demo: serve the example on http://127.0.0.1:8000 (uvicorn: docs/deployment.md says
# why), with DEBUG on (the example's default is off: docs/deployment.md#production-settings)
# make test: run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# A second interpreter for the newest Django (6.x needs Python >= 3.12).
PYTHON_LATEST ?= python3.12
VENV_LATEST ?= .venv-django6

.PHONY: install demo test test-sqlite test-django6 lint dist bench bench-smoke clean

$(BIN)/.installed: requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

demo: install
	DJANGO_DEBUG=1 $(BIN)/python manage.py migrate --no-input
	@echo "Serving the example on http://$(HOST):$(PORT)/"
	DJANGO_DEBUG=1 $(BIN)/uvicorn --host $(HOST) --port $(PORT) --lifespan on example_project.asgi:application

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

# The whole suite on the newest Django, against DATABASE_URL and REDIS_URL when set.
test-django6: $(VENV_LATEST)/.installed
	$(VENV_LATEST)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	DJANGO_DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run

# The sdist, then the wheel built from it (so a file the sdist lacks fails here), into
# dist/; twine checks their metadata and README as PyPI would.
dist: install
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

# The benchmarks (bench/): each writes bench/results/<name>.json, then bench/report.py
# writes docs/benchmarks.md from them. Those that run across processes need
# DATABASE_URL (PostgreSQL) and REDIS_URL; flush_cost and connections need PostgreSQL;
# flush_policy and compaction run on SQLite and, when DATABASE_URL is PostgreSQL, there
# too. bench-smoke runs each for seconds (CI), into bench/results/smoke/, and renders
# the report from those to a scratch file.
BENCH_ARGS ?=
BENCH_OUT ?= docs/benchmarks.md

define benchmarks
	env -u DATABASE_URL $(BIN)/python -m bench.flush_policy $(1)
	env -u DATABASE_URL $(BIN)/python -m bench.compaction $(1)
	@case "$$DATABASE_URL" in postgres*) \
		$(BIN)/python -m bench.flush_policy $(1) && \
		$(BIN)/python -m bench.compaction $(1) && \
		$(BIN)/python -m bench.flush_cost $(1) && \
		$(BIN)/python -m bench.connections $(1);; \
	*) echo "flush_policy, compaction (PostgreSQL), flush_cost and connections skipped: set DATABASE_URL=postgres://...";; esac
	@if [ -n "$$REDIS_URL" ] && case "$$DATABASE_URL" in postgres*) true;; *) false;; esac; then \
		$(BIN)/python -m bench.fanout $(1) && \
		$(BIN)/python -m bench.capacity $(1) && \
		$(BIN)/python -m bench.viewers $(1) && \
		$(BIN)/python -m bench.durable $(1); \
	else echo "fanout, capacity, viewers and durable skipped: they need DATABASE_URL (PostgreSQL) and REDIS_URL"; fi
	$(BIN)/python -m bench.slow_readers $(1)
endef

bench: install
	$(call benchmarks,$(BENCH_ARGS))
	$(BIN)/python -m bench.report --out $(BENCH_OUT)

bench-smoke: install
	$(call benchmarks,--smoke)
	$(BIN)/python -m bench.report --results bench/results/smoke --out $(or $(TMPDIR),/tmp)/streaming_app_bench/benchmarks.md

clean:
	rm -rf $(VENV) $(VENV_LATEST) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
