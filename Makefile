# The two commands of the README: `make demo` and `make test`. Both install what they need.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: deps demo status test test-s3-backup lint unit docs lab-up lab-down clean bench bench-quick

deps: $(VENV)/.installed

# The package installs the agent only (what the hosts get); the lab and the benchmarks are used from this
# checkout: a .pth file puts it on the venv's path and `seafbackup-lab` is a small launcher.
$(VENV)/.installed: pyproject.toml constraints.txt scripts/system-packages.sh
	./scripts/system-packages.sh
	$(PYTHON) -m venv $(VENV)
	rm -rf build  # setuptools would put an older layout's modules left there into the wheel
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[ansible,dev,bench]'
	echo "$(CURDIR)" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/seafbackup-checkout.pth"
	printf '#!%s\nimport sys\nfrom seafbackup_lab.cli import main\nsys.exit(main())\n' "$(abspath $(BIN))/python" > $(BIN)/seafbackup-lab
	chmod 755 $(BIN)/seafbackup-lab
	touch $@

demo: deps
	$(BIN)/python -m seafbackup_lab.demo

# `seaf-backup-cmd status` on both lab hosts (after `make demo`): what an admin runs on each server.
status: deps
	-$(BIN)/seafbackup-lab cmd primary status
	-$(BIN)/seafbackup-lab cmd backup status

lint: deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/ansible-lint -q

unit: deps
	$(BIN)/pytest tests/unit

# docs/variables.md is generated from the roles' meta/argument_specs.yml (a unit test fails when it is stale).
docs: deps
	$(BIN)/python scripts/variables_reference.py > docs/variables.md

# Test files run on TEST_JOBS pytest-xdist workers (a file stays on one worker: its labs are shared by
# its tests); each worker has lab addresses of its own (tests/conftest.py).
# The hosts lab's root image (a cold build downloads Debian for ~2-4 minutes) is built in the background from the
# start, while lint and the other test files run; tests/hosts waits for it (the build holds a lock).
# Beside them, the crash test (6 kills instead of 30) and verify's test once more, unchanged, with the backup's
# objects in S3 on the lab Ceph, on addresses of their own (about 2 minutes with Ceph's start;
# docs/object-storage.md): scripts/run-tests.sh.
TEST_JOBS ?= 2
test: deps
	$(BIN)/seafbackup-lab hosts image > .hosts-image.log 2>&1 &
	$(MAKE) lint
	./scripts/run-tests.sh $(TEST_JOBS)

# Every fault, verify and failover test that runs unchanged on S3 (tests/faults/test_closure.py's second test
# breaks files by their paths: filesystem only).
test-s3-backup: deps
	$(BIN)/pytest -p no:xdist --backup-storage=s3 tests/faults/test_crashes.py tests/integration/test_verify.py \
		tests/faults/test_closure.py::test_the_closure_of_a_copied_library_is_complete_and_counted \
		tests/integration/test_failover.py

# Benchmarks: write docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks/*.png.
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
