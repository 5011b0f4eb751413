# The two commands of the quick start: `make run` and `make test`. Both set themselves up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run lint test bench install check-broker check-postgres clean cluster cluster-down

# the exact versions of requirements-dev.lock (the dev and bench extras, pip itself included), every file checked
# against its hash; then esi itself, editable, without resolving anything again. The lock files are compiled from
# pyproject.toml by pip-compile (docs/install.md). `esi` was the distribution's name before 0.2.0 (now esi-bus):
# an old one is removed, with its metadata in the source tree, or its entry points would register every system twice.
$(BIN)/.installed: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip uninstall --quiet --yes esi 2>/dev/null || true
	rm -rf esi.egg-info
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/.installed

check-broker: install
	@$(BIN)/esi check broker

check-postgres: install
	@$(BIN)/esi check postgres

## run: the whole system (1C API, DMS and CRM adapters, fake Creatio, fake DMS) on the local RabbitMQ, SQLite store
run: check-broker
	ESI_LOG_FORMAT=$${ESI_LOG_FORMAT:-text} $(BIN)/esi run --with-fakes

## lint: style (ruff check, ruff format --check), the architecture (lint-imports: [tool.importlinter] in
## pyproject.toml), types (mypy --strict on esi/, incremental through .mypy_cache), the message contracts
lint: install
	$(BIN)/ruff check esi tests bench
	$(BIN)/ruff format --check esi tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy esi
	$(BIN)/esi contracts check contracts

# branch coverage of esi, the esi processes the tests start included ([tool.coverage.run] in pyproject.toml);
# `make test COVERAGE=` runs without it
COVERAGE ?= --cov=esi --cov-branch --cov-report=term-missing:skip-covered

## test: lint first, then the whole suite with branch coverage, against the local RabbitMQ and PostgreSQL
test: lint check-broker check-postgres
	$(BIN)/pytest -q $(COVERAGE) $(PYTEST_ARGS)

## bench: the benchmark harness (not a test); figures land in bench/results/
bench: check-broker
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## cluster: three RabbitMQ nodes on loopback (n1..n3@localhost, AMQP 5681-5683) for the cluster tests and `ESI_AMQP_URL`
cluster:
	deploy/cluster/local.sh up

cluster-down:
	deploy/cluster/local.sh down

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .coverage .coverage.*
