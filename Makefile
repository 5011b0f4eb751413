# The two commands of the quick start: `make run` and `make test`. Both set themselves up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test bench install check-broker check-postgres clean cluster cluster-down

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

## test: lint (ruff) and types (mypy --strict on esi/), then the whole suite, against the local RabbitMQ and PostgreSQL
test: check-broker check-postgres
	$(BIN)/ruff check esi tests bench
	$(BIN)/mypy esi
	$(BIN)/esi contracts check contracts
	$(BIN)/pytest -q $(PYTEST_ARGS)

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
	rm -rf $(VENV) var .pytest_cache
