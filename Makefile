# `make demo` and `make test` work from a fresh clone: they create .venv, install Sotto and
# fetch Apache Kafka from Maven Central when missing (`make test` also installs the PostgreSQL
# server from apt when it is missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.sotto-installed
KAFKA_LIB := deploy/kafka/lib/.fetched

.PHONY: install kafka postgres check test demo lint bench clean

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[all,dev]'
	@touch $@

$(KAFKA_LIB): deploy/kafka/pom.xml
	cd deploy/kafka && mvn -q -B package
	@touch $@

install: $(INSTALLED)

kafka: $(KAFKA_LIB)

# The PostgreSQL server binaries (initdb, pg_ctl, postgres) for the tests that start their own
# server (deploy/postgres_local.py), found on PATH or under /usr/lib/postgresql/*/bin; apt
# installs them only when they are missing. Never skipped: without them those tests fail.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

postgres: $(INSTALLED)
	@$(PY) -m deploy.postgres_local --check >/dev/null || { \
	  echo "installing the PostgreSQL server: apt-get install postgresql"; \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql && \
	  $(PY) -m deploy.postgres_local --check; }

# Quality gates first (cheap), then the suite: lint, format, import contracts (the package
# DAG), types of the device-side packages, then pytest (doctests of the library packages too).
check: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy privacy edge_client

test: install kafka postgres check
	$(PY) -m pytest -q

demo: install kafka
	$(VENV)/bin/sotto demo

# Benchmarks print one JSON object each (see docs/benchmarks.md). Flower is installed without its
# dependency pins (they would downgrade protobuf/typer/rich); only its secure_aggregation
# primitives are used, side by side with ours.
bench: install kafka
	$(PY) -m pip install -q --no-deps 'flwr>=1.20,<2'
	$(PY) -m pip install -q 'pycryptodome>=3.18,<4' 'iterators<0.0.3' grpcio httpx
	$(VENV)/bin/sotto bench ingest --json
	$(VENV)/bin/sotto bench secagg --json
	$(VENV)/bin/sotto bench round --json
	$(VENV)/bin/sotto bench learner --json
	$(VENV)/bin/sotto bench edge --json
	$(VENV)/bin/sotto bench quality --json
	$(VENV)/bin/sotto bench hint --json

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf .sotto sotto-report .pytest_cache
