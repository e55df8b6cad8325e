# The two commands of the README: `make demo` and `make test`. Both install what they need.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: deps demo test lint unit lab-up lab-down clean

deps: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/system-packages.sh
	./scripts/system-packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[ansible,dev]'
	touch $@

demo: deps
	$(BIN)/python -m seafbackup_lab.demo

lint: deps
	$(BIN)/ruff check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/ansible-lint -q

unit: deps
	$(BIN)/pytest tests/unit

test: lint
	$(BIN)/pytest

lab-up: deps
	$(BIN)/seafbackup-lab up

lab-down: deps
	$(BIN)/seafbackup-lab down

clean: lab-down
	rm -rf .lab
