# The two commands of the quick start: `make run` and `make test`. Both set themselves up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run lint test bench install check-broker check-postgres clean cluster cluster-down chart

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
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

## chart: the Helm chart (deploy/helm/esi): helm lint and helm template of the default values and of every value set
## in deploy/helm/esi/ci/, and its README's values table; installs helm into .venv/bin/helm when missing
chart: install
	deploy/helm/install-helm.sh
	$(BIN)/python deploy/helm/gen_values_table.py --check
	$(BIN)/helm lint --strict deploy/helm/esi
	$(BIN)/helm template esi deploy/helm/esi >/dev/null
	@for values in deploy/helm/esi/ci/*-values.yaml; do \
	  echo "chart: $$values"; \
	  $(BIN)/helm lint --strict deploy/helm/esi -f $$values || exit 1; \
	  $(BIN)/helm template esi deploy/helm/esi -f $$values >/dev/null || exit 1; \
	done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .coverage .coverage.*
