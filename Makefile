# points-adjuster: the two commands a new machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup kafka-jars demo test unit lint format bench bench-quick bench-transport bench-security chaos clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/.installed: pyproject.toml devkit/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' -e ./devkit
	touch $@

setup: $(BIN)/.installed  ## create .venv and install the product (with its dev extras) and the dev kit

kafka-jars: setup  ## download Apache Kafka's jars once (cached in .cache/, git-ignored)
	$(BIN)/python -m pa_devkit.localinfra.kafka fetch

demo: setup kafka-jars  ## local broker + sandbox + service, a few hundred commands, a summary
	$(BIN)/points-adjuster-devkit demo

lint: setup  ## ruff (lint and format check) and mypy --strict on service/, the dev kit, tests and benchmarks
	$(BIN)/ruff check service devkit tests benchmarks
	$(BIN)/ruff format --check service devkit tests benchmarks
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

# Branch coverage of the product, the service's child processes included ([tool.coverage.run]
# in pyproject.toml). The floor sits a few points under what the whole suite measures
# (docs/testing.md); here rather than in addopts, so that one test file runs quickly.
COVERAGE_FLOOR := 92
COVERAGE := --cov=service --cov-branch --cov-report=term-missing:skip-covered \
	--cov-fail-under=$(COVERAGE_FLOOR)

test: setup kafka-jars lint  ## the whole suite with coverage: lint, unit, integration, end-to-end (starts its own broker)
	$(BIN)/pytest $(COVERAGE)

unit: setup  ## unit tests only (no broker)
	$(BIN)/pytest tests/unit

bench: setup kafka-jars  ## end-to-end sweep, baseline, paced latency, memory (about 20 min)
	$(BIN)/python benchmarks/bench_throughput.py --json .cache/bench-throughput.json

bench-quick: setup kafka-jars  ## the reduced end-to-end sweep (about 4 min)
	$(BIN)/python benchmarks/bench_throughput.py --quick

bench-transport: setup  ## client CPU per PAS call: httpx's transport vs aiohttp's
	$(BIN)/python benchmarks/bench_transport.py

bench-security: setup  ## per-request signing/encryption cost next to the raw RSA/AES floor
	$(BIN)/python benchmarks/bench_security.py -n 2000 -r 3

chaos: setup kafka-jars  ## the chaos suite (5,000 commands, faults, SIGKILLs, a broker restart) and the hostile-input suite, full size
	$(BIN)/pytest tests/chaos tests/hostile --chaos-full -s -p no:cacheprovider

format: setup  ## apply ruff's formatting and fixes
	$(BIN)/ruff format service devkit tests benchmarks
	$(BIN)/ruff check --fix service devkit tests benchmarks

clean:  ## remove the virtualenv and caches (keeps the Kafka jar cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
