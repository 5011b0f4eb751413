# The two commands of the quick start: `make run` and `make test`. Both set themselves up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run lint test bench install check-broker check-postgres clean cluster cluster-down catalogs

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

## catalogs: the console's translations (esi/console/locale): extract the texts of its code and templates into
## messages.pot, merge them into each language's messages.po (translate what is new or fuzzy there), compile the .mo
## files esi loads; tests/unit/test_console_i18n.py fails while any of the three is behind
LOCALE := esi/console/locale
catalogs: install
	$(BIN)/pybabel --quiet extract -F $(LOCALE)/babel.cfg --sort-by-file --no-wrap --project=esi --version=console \
		-o $(LOCALE)/messages.pot esi/console
	$(BIN)/pybabel --quiet update -i $(LOCALE)/messages.pot -d $(LOCALE) -D messages --no-wrap --ignore-obsolete
	$(BIN)/pybabel compile --statistics -d $(LOCALE) -D messages

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
