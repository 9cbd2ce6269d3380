# `make demo` and `make test` work from a fresh clone: they create .venv, install Sotto and
# fetch Apache Kafka from Maven Central when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.sotto-installed
KAFKA_LIB := deploy/kafka/lib/.fetched

.PHONY: install kafka test demo lint bench clean

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

$(KAFKA_LIB): deploy/kafka/pom.xml
	cd deploy/kafka && mvn -q -B package
	@touch $@

install: $(INSTALLED)

kafka: $(KAFKA_LIB)

test: install kafka
	$(PY) -m pytest -q

demo: install kafka
	$(VENV)/bin/sotto demo

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf .sotto sotto-report .pytest_cache
