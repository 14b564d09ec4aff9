# Anting: `make run` runs the whole stack, `make test` runs the suite. Each does its
# own set-up (virtualenv, pinned install, Kafka jars) and is quick the second time.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# two stamps: `make run` needs the runtime dependencies and the `run` extra only; the
# suite, lint and the benchmarks add the `dev` extra (pytest, mypy, ruff, profilers, ...)
STAMP     := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

# Two jobs at a time: the virtualenv's install and Maven's resolution of the jars
# (setup's two halves) download at once; every other chain here is in order anyway.
MAKEFLAGS += --jobs=2

.PHONY: help setup jars run test test-fast lint bench bench-quick chaos chaos-cluster chaos-faults up down schema asyncapi-parser clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# uv installs the pinned tree (downloads in parallel, a few seconds where pip takes a
# minute on a fresh machine); it comes from PyPI into the virtualenv itself, pinned here.
# --compile-bytecode as pip does: a module compiled at its first import warns about its
# invalid escapes there (jieba's), which the suite's warnings-as-errors would refuse.
UV_VERSION := 0.13.8

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "Anting needs Python 3.11 ($(PYTHON) not found)"; exit 2; }
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): pyproject.toml requirements.lock | $(BIN)/uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c requirements.lock -e '.[run]'
	@touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c requirements.lock -e '.[dev]'
	@touch $(DEV_STAMP)

# The jars need only the standard library (devtools/localkafka.py), so Maven resolves
# them while the virtualenv installs: the two downloads overlap on a fresh clone.
# Without a broker of one's own, resolve the local broker's jars now; without Java or
# Maven this stops with one message saying what to install or set instead.
jars: | $(BIN)/python
	@test -n "$$KAFKA_BOOTSTRAP_SERVERS" || $(BIN)/python -m devtools.localkafka

setup: $(STAMP) jars  ## virtualenv with the pinned runtime dependencies, and the Kafka jars (both at once)

# `anting run` is make's own child (no shell between them) and stops everything it
# started when make dies, even by kill -9: it asks the kernel for a parent-death signal.
run: setup  ## the whole stack on this machine: Kafka, topics, catalog, the three services, the seed events
	$(BIN)/anting run

# The suite and lint need no jars of `setup`: the tests' broker is KAFKA_BOOTSTRAP_SERVERS,
# testcontainers or the local one (whose jars the suite resolves itself when it needs them).
# Two workers (pytest-xdist), a file each at a time, each with a broker of its own: most of
# the suite's time is spent waiting on brokers and services, not computing.
# PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
PYTEST_ARGS := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

test: $(DEV_STAMP) lint  ## lint, then the whole suite against a real Kafka broker
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: $(DEV_STAMP)  ## the suite without lint
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(DEV_STAMP)  ## ruff, mypy (strict) and the import layers (import-linter, see docs/ARCHITECTURE.md)
	$(BIN)/ruff check shared services devtools tests bench
	$(BIN)/mypy shared services devtools
	$(BIN)/lint-imports

bench: setup $(DEV_STAMP)  ## the performance suite; writes bench/results.json and BENCHMARKS.md
	$(BIN)/python -m bench

bench-quick: setup $(DEV_STAMP)  ## the benchmark harness at tiny sizes (the suite runs this too)
	$(BIN)/python -m bench --quick

chaos: setup $(DEV_STAMP)  ## the kill tests at full size
	ANTING_CHAOS_FULL=1 $(BIN)/pytest -m slow

# 20,000 events (a quarter through ingest's HTTP API) through 2 enrich and 2 notify
# instances on a local 3-node cluster while brokers (the coordinators first; killed and
# stopped cleanly), enrich and notify instances are killed, one enrich paused past its
# session; the checker (devtools/checker.py) prints lost, duplicated, aborted reads,
# order, unseen and undelivered notifications, and the run the 503s ingest answered
chaos-cluster: setup $(DEV_STAMP)  ## the replicated-cluster chaos run at full size (tests/cluster/chaos.py)
	$(BIN)/python -m tests.cluster.chaos

# Each fault while events flow through enrich (exactly once, at least once) and notify on
# a broker of its own: the broker SIGSTOPped past the request timeout, the services paused
# past their session timeout, enriched-events' max.message.bytes lowered and restored, a
# record no client can decode, and on a 3-node cluster the transaction coordinator's broker
# stopped; prints the matrix (docs/RELIABILITY.md has a full run)
chaos-faults: setup $(DEV_STAMP)  ## the fault matrix at full size (tests/faults/matrix.py)
	$(BIN)/python -m tests.faults.matrix

schema: setup  ## regenerate docs/schemas/ from the models
	$(BIN)/anting schema

ASYNCAPI_PARSER := .local/node/node_modules/@asyncapi/parser/package.json
asyncapi-parser: $(ASYNCAPI_PARSER)  ## @asyncapi/parser (Node) into .local/node, for the test that validates docs/asyncapi.yaml
$(ASYNCAPI_PARSER):
	@command -v npm >/dev/null || { echo "the AsyncAPI parser needs Node.js and npm"; exit 2; }
	mkdir -p .local/node
	npm install --prefix .local/node --no-audit --no-fund --silent @asyncapi/parser@3.6.6

up:  ## the stack in Docker: Kafka, the services, Prometheus, Grafana
	docker compose up --build

down:
	docker compose down -v

clean:  ## remove the virtualenv, the jars and local state
	rm -rf $(VENV) kafka/libs kafka/.stamp .local
