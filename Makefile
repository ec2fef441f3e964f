# points-adjuster: the two commands a new machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup lock audit kafka-jars registry-jars helm-tools prometheus-tools store-tools demo test unit lint format bench bench-quick profile bench-transport bench-security bench-kafka-clients bench-stores bench-workers chaos clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# The environment comes from requirements/dev.lock (docs/dependencies.md): every package at its
# locked version, each file checked against the lock's sha256, wheels only (an sdist's build
# would fetch its backend past the hashes); then the two projects, editable, with nothing more
# (--no-deps), built by the lock's setuptools (--no-build-isolation); pip check fails on a lock
# that no longer satisfies pyproject.toml.
$(BIN)/.installed: requirements/dev.lock pyproject.toml devkit/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --only-binary=:all: -r requirements/dev.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . -e ./devkit
	$(BIN)/pip check
	touch $@

setup: $(BIN)/.installed  ## create .venv and install the product (with its dev extras) and the dev kit from requirements/dev.lock

# The lock files, compiled by uv (pinned in requirements/dev.in) for the image's Python and
# platform whatever machine runs this: every file of each pinned version hashed. uv keeps the
# pins a lock already has while pyproject.toml allows them; UPGRADE=1 takes the newest release
# of everything, UPGRADE_PACKAGE=NAME of one package. product.lock first: dev.lock is
# constrained to its versions.
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu
UV_COMPILE = $(BIN)/uv --no-config pip compile --quiet --generate-hashes $(LOCK_TARGET) \
	--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) \
	$(if $(UPGRADE_PACKAGE),--upgrade-package $(UPGRADE_PACKAGE))

lock: setup  ## refresh requirements/product.lock and dev.lock from pyproject.toml (UPGRADE=1: newest releases)
	$(UV_COMPILE) pyproject.toml --extra postgres --extra redis -o requirements/product.lock
	$(UV_COMPILE) requirements/dev.in --no-emit-package points-adjuster \
		--no-emit-package points-adjuster-devkit -o requirements/dev.lock

# pip-audit against PyPI's advisory data (AUDIT_SERVICE=osv: OSV's API), the lock's hashes
# checked. --strict: a package the service cannot answer for fails the run instead of being
# skipped (without it, an unreachable database reads "No known vulnerabilities found").
# Exits non-zero both on a finding and when no audit took place, saying which.
AUDIT_SERVICE ?= pypi
AUDIT_LOCK ?= requirements/product.lock

audit: setup  ## pip-audit requirements/product.lock against an advisory database (needs one reachable; not in make test)
	@mkdir -p .cache; log=.cache/audit.log; \
	if $(BIN)/pip-audit --strict --progress-spinner off --vulnerability-service $(AUDIT_SERVICE) \
		--disable-pip --require-hashes -r $(AUDIT_LOCK) >$$log 2>&1; then cat $$log; \
	else cat $$log; \
		if grep -Eq '^Found [0-9]+ known vulnerabilit' $$log; then \
			echo "audit: known vulnerabilities in $(AUDIT_LOCK) (above)" >&2; \
		else \
			echo "audit: NOT RUN: pip-audit could not audit every package (the error above; where no advisory database ($(AUDIT_SERVICE)) answers, as on the project's machines); no result (docs/dependencies.md)" >&2; \
		fi; \
		exit 1; \
	fi

kafka-jars: setup  ## download Apache Kafka's jars once (cached in .cache/, git-ignored)
	$(BIN)/python -m pa_devkit.localinfra.kafka fetch

# Apicurio Registry (the Confluent-compatible schema registry the tests start, in memory) from
# Maven Central, unpacked once into .cache/apicurio (devkit/pa_devkit/localinfra/registry.py).
registry-jars: setup  ## download Apicurio Registry once (cached in .cache/) for the schema registry tests
	$(BIN)/python -m pa_devkit.localinfra.registry fetch

# Helm, built from source by the Go toolchain into .cache/bin (git-ignored) once, for the chart's
# tests (tests/deploy/test_helm.py). Without Go the chart's tests are skipped, saying why; with
# CI=true a missing Go fails here and a missing helm fails the tests.
HELM_VERSION := v3.22.0
HELM := .cache/bin/helm

helm-tools: $(HELM)  ## build helm (v3.22.0) once into .cache/bin for the Helm chart's tests (about a minute; needs Go)

$(HELM):
	@if command -v go >/dev/null 2>&1; then \
		echo "building helm $(HELM_VERSION) into .cache/bin (about a minute)"; \
		GOBIN=$(CURDIR)/.cache/bin go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); \
	elif [ "$$CI" = "true" ]; then \
		echo "helm-tools: no Go toolchain to build helm with" >&2; exit 1; \
	else \
		echo "helm-tools: no Go toolchain: the Helm chart's tests will be skipped"; \
	fi

prometheus-tools:  ## install Debian's prometheus package once for promtool (the alert rules' tests; root)
	@if command -v promtool >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's prometheus package for promtool"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	elif [ "$$CI" = "true" ]; then \
		echo "prometheus-tools: cannot install promtool (not root, or no apt-get)" >&2; exit 1; \
	else \
		echo "prometheus-tools: promtool is not installed: the alert rules' promtool test will be skipped"; \
	fi

# PostgreSQL and Redis for the store tests, which start their own servers as plain processes on
# free loopback ports (devkit/pa_devkit/localinfra/postgres.py and redis.py; tests/store_support.py).
# Debian keeps postgres off PATH (/usr/lib/postgresql/<major>/bin), so both places are looked at.
# Debian's packages may start a system service (policy-rc.d permitting); no test uses it.
store-tools:  ## install Debian's postgresql and redis-server packages once for the store tests' own servers (root)
	@missing=""; \
	if ! command -v postgres >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then missing=" postgresql"; fi; \
	if ! command -v redis-server >/dev/null 2>&1; then missing="$$missing redis-server"; fi; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's$$missing package(s) for the store tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	elif [ "$$CI" = "true" ]; then \
		echo "store-tools: cannot install$$missing (not root, or no apt-get)" >&2; exit 1; \
	else \
		echo "store-tools: not installed:$$missing; the PostgreSQL and Redis store tests will be skipped"; \
	fi

demo: setup kafka-jars  ## local broker + sandbox + service, a few hundred commands, a summary
	$(BIN)/points-adjuster-devkit demo

lint: setup  ## ruff (lint and format check) and mypy --strict on service/, the dev kit, tests and benchmarks; schemas check (compatibility with the released schemas)
	$(BIN)/ruff check service devkit tests benchmarks examples
	$(BIN)/ruff format --check service devkit tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile
	$(BIN)/points-adjuster schemas check --dir schemas --transitive --no-registry

# Branch coverage of the product, the service's child processes included ([tool.coverage.run]
# in pyproject.toml). The floor sits a few points under what the whole suite measures
# (docs/testing.md); here rather than in addopts, so that one test file runs quickly.
COVERAGE_FLOOR := 92
COVERAGE := --cov=service --cov-branch --cov-report=term-missing:skip-covered \
	--cov-fail-under=$(COVERAGE_FLOOR)

test: setup kafka-jars registry-jars helm-tools prometheus-tools store-tools lint  ## the whole suite with coverage: lint, unit, integration, end-to-end (starts its own broker)
	$(BIN)/pytest $(COVERAGE)

unit: setup  ## unit tests only (no broker)
	$(BIN)/pytest tests/unit

bench: setup kafka-jars store-tools  ## end-to-end sweep, baseline, paced latency, memory, then bench-stores and bench-workers (about 27 min)
	$(BIN)/python benchmarks/bench_throughput.py --json .cache/bench-throughput.json
	$(BIN)/python benchmarks/bench_stores.py --json .cache/bench-stores.json
	$(BIN)/python benchmarks/bench_workers.py --json .cache/bench-workers.json

bench-workers: setup kafka-jars  ## 1 vs 2 workers (run --workers N) on one SQLite store: the rate and the CPU of every process (about 2 min)
	$(BIN)/python benchmarks/bench_workers.py --json .cache/bench-workers.json

bench-quick: setup kafka-jars store-tools  ## the reduced end-to-end sweep (about 4 min)
	$(BIN)/python benchmarks/bench_throughput.py --quick

profile: setup kafka-jars store-tools  ## py-spy profile of the service and of the plumbing floor over one bench row (sweep-p12-a10000, 5,000 commands): top frames in µs per adjustment, in .cache/profile/
	$(BIN)/python benchmarks/bench_throughput.py --only sweep-p12-a10000 --commands 5000 --profile .cache/profile

bench-transport: setup  ## client CPU per PAS call: httpx's transport, aiohttp's and ours
	$(BIN)/python benchmarks/bench_transport.py

bench-security: setup  ## per-request signing/encryption cost next to the raw RSA/AES floor
	$(BIN)/python benchmarks/bench_security.py -n 2000 -r 3

bench-kafka-clients: setup kafka-jars  ## CPU per record of aiokafka vs librdkafka (confluent-kafka), in a backlog and at the service's rate (about 3 min)
	$(BIN)/python benchmarks/bench_kafka_clients.py

bench-stores: setup kafka-jars store-tools  ## each idempotency store's cost per adjustment vs memory; 1 vs 2 replicas on one PostgreSQL (about 3 min)
	$(BIN)/python benchmarks/bench_stores.py --json .cache/bench-stores.json

chaos: setup kafka-jars store-tools  ## the chaos suite (5,000 commands, faults, SIGKILLs, a broker restart) and the hostile-input suite, full size
	$(BIN)/pytest tests/chaos tests/hostile --chaos-full -s -p no:cacheprovider

format: setup  ## apply ruff's formatting and fixes
	$(BIN)/ruff format service devkit tests benchmarks examples
	$(BIN)/ruff check --fix service devkit tests benchmarks examples

clean:  ## remove the virtualenv and caches (keeps the Kafka jar cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
