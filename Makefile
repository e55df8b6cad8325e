# The two commands of the README: `make demo` and `make test`. Both install what they need.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: deps demo test lint unit lab-up lab-down clean bench bench-quick

deps: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/system-packages.sh
	./scripts/system-packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[ansible,dev,bench]'
	touch $@

demo: deps
	$(BIN)/python -m seafbackup_lab.demo

lint: deps
	$(BIN)/ruff check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/ansible-lint -q

unit: deps
	$(BIN)/pytest tests/unit

# Test files run on TEST_JOBS pytest-xdist workers (a file stays on one worker: its labs are shared by
# its tests); each worker has lab addresses of its own (tests/conftest.py).
TEST_JOBS ?= 2
test: lint
	$(BIN)/pytest -n $(TEST_JOBS) --dist loadfile

# Benchmarks (issue 7): writes docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks/*.png.
bench: deps
	$(BIN)/python -m bench

bench-quick: deps
	$(BIN)/python -m bench --quick

lab-up: deps
	$(BIN)/seafbackup-lab up

lab-down: deps
	$(BIN)/seafbackup-lab down

clean: lab-down
	rm -rf .lab
