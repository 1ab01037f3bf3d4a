# omnicc — the two commands are `make demo` and `make test`.
VENV := .venv
OMNICC := $(VENV)/bin/omnicc
PYTHON := $(VENV)/bin/python
DEMO_CONFIG := examples/omnicc.yaml

.PHONY: install demo up down status test unit integration lint clean

install:
	@sh scripts/install.sh

## Start the demo stack (examples/omnicc.yaml, state under ./var), place demo calls, report.
demo: install
	$(OMNICC) -c $(DEMO_CONFIG) up
	$(OMNICC) -c $(DEMO_CONFIG) demo

up: install
	$(OMNICC) -c $(DEMO_CONFIG) up

down:
	$(OMNICC) -c $(DEMO_CONFIG) down

status:
	$(OMNICC) -c $(DEMO_CONFIG) status

## The whole suite: unit tests, then integration tests against a stack of their own.
test: install
	$(PYTHON) -m pytest tests -ra

unit: install
	$(PYTHON) -m pytest tests/unit -q

integration: install
	$(PYTHON) -m pytest tests/integration -ra

lint:
	$(VENV)/bin/ruff check .

clean:
	rm -rf var .pytest_cache .ruff_cache
