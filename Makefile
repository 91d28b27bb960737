# Hookpost: `make run` starts the system locally, `make test` runs the test suite.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test lint install broker bench clean image

run: install broker  ## set up and run Hookpost locally (store, dispatcher, demo receiver, one demo event)
	$(BIN)/hookpost demo

test: install broker  ## run the whole test suite against the real broker and the local store
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .

install: $(BIN)/.installed

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

image:  ## build the container image hookpost:<version> with docker or podman (docs/deployment.md)
	@bash deploy/local/build-image.sh

broker:
	@bash deploy/local/ensure-rabbitmq.sh

bench: install broker  ## run the benchmark (see bench/README.md)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .hookpost build *.egg-info
