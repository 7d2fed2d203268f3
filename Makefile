# Developer and CI entry points. Every tool runs from .venv/bin, so nothing here
# depends on an activated virtualenv. `make help` lists the targets.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REDIS_HOST ?= 127.0.0.1
REDIS_PORT ?= 6379
POSTGRES_HOST ?= 127.0.0.1
POSTGRES_PORT ?= 5432
# CI=true: the test suite fails, instead of skipping, when Redis is unreachable
# (tests/conftest.py reads it). `make test` starts Redis first, so it defaults to true;
# `make test CI=false` (or CI=false in the environment) opts out.
CI ?= true
# The one test command, shared by `make test` and `make test-under-load`.
# Tests run on every core (pytest-xdist): most wait on Redis, workers and clocks, not the
# CPU; each test has its own key prefix, schema and ports, so they do not meet.
TEST_CMD = CI=$(CI) $(BIN)/pytest -n auto
# apt-get needs root; sudo when not root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export NO_MKDOCS_2_WARNING := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help

.PHONY: help venv install-demo demo install redis postgres test-tools browser screenshots lint test test-under-load docs check bench soak clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

venv: ## Create .venv (if missing) and upgrade pip.
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install-demo: venv ## Install the package with the embedded (no-server) extra.
	$(BIN)/python -m pip install --quiet -e ".[embedded]"

demo: install-demo ## Run the demo in embedded mode: no Redis needed.
	$(BIN)/python -m cml_jobs demo

install: venv ## Install the package with every development extra.
	$(BIN)/python -m pip install --quiet -e ".[dev]"

redis: ## Start a throwaway local Redis (no persistence) unless one answers.
	@redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping >/dev/null 2>&1 && echo "redis: answering on $(REDIS_HOST):$(REDIS_PORT)" || { \
	  command -v redis-server >/dev/null || { echo "redis: redis-server is not installed (apt-get install redis-server, or brew install redis)" >&2; exit 1; }; \
	  redis-server --daemonize yes --bind $(REDIS_HOST) --port $(REDIS_PORT) --save "" --appendonly no >/dev/null; \
	  for i in 1 2 3 4 5 6 7 8 9 10; do redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping >/dev/null 2>&1 && { echo "redis: started on $(REDIS_HOST):$(REDIS_PORT)"; exit 0; }; sleep 0.5; done; \
	  echo "redis: started redis-server but it does not answer on $(REDIS_HOST):$(REDIS_PORT)" >&2; exit 1; }

# The PostgreSQL store's tests use the server at 127.0.0.1:5432 (database `test`, trust
# auth; CML_JOBS_TEST_POSTGRES_URL points them elsewhere). This only checks that it
# answers: installing and running PostgreSQL is the machine's business.
postgres: ## Check that PostgreSQL answers on $(POSTGRES_HOST):$(POSTGRES_PORT).
	@command -v pg_isready >/dev/null || { echo "postgres: pg_isready is not installed (apt-get install postgresql-client)" >&2; exit 1; }
	@pg_isready -q -h $(POSTGRES_HOST) -p $(POSTGRES_PORT) -t 10 && echo "postgres: answering on $(POSTGRES_HOST):$(POSTGRES_PORT)" || { \
	  echo "postgres: nothing answers on $(POSTGRES_HOST):$(POSTGRES_PORT); start PostgreSQL (with a database 'test' the tests may use) or set CML_JOBS_TEST_POSTGRES_URL" >&2; exit 1; }

# The fault and TLS tests start redis-servers of their own and make certificates with
# openssl; with CI=true they fail, not skip, without them. Debian's redis-server (>= 6)
# is built with TLS: with none, `--tls-port` without a certificate says "Failed to
# configure TLS"; a build without TLS rejects the directive instead.
test-tools: ## Install redis-server (>= 6, TLS) and openssl unless present; check them.
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
	  command -v apt-get >/dev/null || { echo "test-tools: missing$$missing; install them" >&2; exit 1; }; \
	  echo "test-tools: installing$$missing (apt-get)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null || exit 1; \
	fi; \
	redis-server --version; \
	major=$$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p'); \
	[ "$${major:-0}" -ge 6 ] || { echo "test-tools: the tests need redis-server >= 6" >&2; exit 1; }; \
	probe=$$(timeout 10 redis-server --port 0 --tls-port 1 --save "" --appendonly no 2>&1); \
	case "$$probe" in \
	  *"Failed to configure TLS"*|*tls-cert-file*) echo "test-tools: redis-server speaks TLS";; \
	  *) echo "test-tools: this redis-server cannot speak TLS (built without it?):" >&2; \
	     echo "$$probe" | tail -5 >&2; exit 1;; \
	esac; \
	openssl version

# The dashboard's browser test (tests/test_dashboard_browser.py) drives Debian's chromium
# through Playwright; under CI=true it fails, not skips, without it. Playwright's own
# browser download is not used (`playwright install` is never run).
browser: ## Install Debian's chromium (for the dashboard's browser test) unless present.
	@command -v chromium >/dev/null || { \
	  command -v apt-get >/dev/null || { echo "browser: chromium is missing; install it" >&2; exit 1; }; \
	  echo "browser: installing chromium (apt-get)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null || exit 1; \
	}; \
	chromium --version 2>/dev/null

screenshots: install browser redis ## Regenerate the dashboard screenshots in docs/images/.
	$(BIN)/python docs/screenshots.py

lint: ## ruff check, ruff format --check, mypy --strict.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict src

test: install test-tools browser redis postgres ## Run the test suite against a local Redis and PostgreSQL.
	$(TEST_CMD)

# A busy machine is where waits that only work on an idle one fail: one core is kept
# busy for the whole run, and the burner is killed however the run ends (Ctrl-C too).
test-under-load: install test-tools browser redis postgres ## `make test` while a CPU-bound process keeps one core busy.
	@$(PYTHON) -c "while True: pass" & burner=$$!; \
	trap 'kill $$burner 2>/dev/null' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
	echo "test-under-load: CPU burner running (pid $$burner)"; \
	$(TEST_CMD)

docs: ## Build the documentation site into site/, warnings as errors.
	$(BIN)/mkdocs build --strict

check: install lint test docs ## Everything CI checks (see also .ci/run).

bench: install ## Run the benchmarks.
	$(BIN)/python -m benchmarks

# No soak tests may exist yet: "no tests collected" (exit 5) is fine here, unlike in `make test`.
soak: install redis ## Long-running reliability tests (marker: soak).
	$(BIN)/pytest tests/reliability -m soak -s -p no:cacheprovider

clean: ## Remove build, cache and docs output (keeps .venv).
	rm -rf build dist site .mypy_cache .pytest_cache .ruff_cache src/*.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
