# Two entry points, each does its own set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-quick mutate lint venv octavia-venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,bench,octavia]'
	touch $(STAMP)

venv: $(STAMP)

## .octavia-venv: the real Octavia 19 for tests/test_octavia_*.py (instant once built).
octavia-venv:
	scripts/octavia-venv

## Run the daemon on its defaults (broker amqp://guest:guest@127.0.0.1:5672/, noop backend).
run: $(STAMP)
	scripts/ensure-packages rabbitmq-server
	scripts/ensure-broker
	$(VENV)/bin/lbactors serve

## Run the whole test suite: installs what it runs for real (RabbitMQ, HAProxy, MariaDB; as root),
## builds .venv and .octavia-venv, starts the broker if it is down.
test: $(STAMP) octavia-venv
	scripts/ensure-packages
	scripts/ensure-broker
	$(VENV)/bin/ruff check lbactors supervisor bench tests scripts
	$(VENV)/bin/mypy
	$(PY) -m pytest

## The quick loop: everything but the tests that run the real Octavia.
test-quick: $(STAMP)
	scripts/ensure-packages
	scripts/ensure-broker
	$(PY) -m pytest -m "not octavia"

## Mutation testing of the pure core and the router (scripts/mutate.py): a deterministic sample
## of mutants per module, each run against the module's tests in a scratch copy of the tree; the
## score and the surviving mutants go to docs/mutation.md. The router's mutants run
## tests/test_router.py (fake workers, seconds) and then tests/test_daemon.py (daemons on the
## broker, about 15 s), hence its smaller sample; the defaults take about 5 minutes here.
## Knobs: MUTANTS (per module), ROUTER_MUTANTS, MUTATE_SEED, MUTATE_JOBS (this machine has 2
## cores), MUTATE_ARGS (more options: --target FILE, --timeout S, --list, --output PATH).
MUTANTS        ?= 25
ROUTER_MUTANTS ?= 15
MUTATE_SEED    ?= 0
MUTATE_JOBS    ?= 1
MUTATE_ARGS    ?=

mutate: $(STAMP)
	scripts/ensure-broker
	$(PY) scripts/mutate.py --max-mutants $(MUTANTS) \
		--max-mutants supervisor/router.py=$(ROUTER_MUTANTS) \
		--seed $(MUTATE_SEED) --jobs $(MUTATE_JOBS) $(MUTATE_ARGS)

clean:
	rm -rf $(VENV) .octavia-venv .pytest_cache .mypy_cache
