# s3-outbox developer tasks. Only needs python3 (3.11+), pip and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv test lint run dev-servers clean chaos soak bench

venv: $(STAMP)

# Re-installs only when pyproject.toml changes (the stamp is older than it).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# Every performance figure in one run on fresh embedded servers; table on stdout, JSON in
# bench-results.json. BENCH_ARGS=--quick for a < 1 min smoke run.
BENCH_ARGS ?=
bench: venv
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[bench]'
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

run: venv
	$(BIN)/s3-outbox run

dev-servers: venv
	$(BIN)/python -m worker.embedded

# The full chaos run (2,000 documents, faults, every invariant checked); CHAOS_ARGS e.g.
# "--documents 500 --seed 7 --json chaos.json". Exits non-zero on any broken invariant.
CHAOS_ARGS ?=
chaos: venv
	$(BIN)/python -m harness.chaos $(CHAOS_ARGS)

# The soak: the chaos run's load and faults for SOAK_MINUTES, figures every minute (documents/s,
# faults, dead, lost, RSS of every process), then every invariant checked.
SOAK_MINUTES ?= 30
soak: venv
	$(BIN)/python -m harness.chaos --duration $(SOAK_MINUTES) $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .data build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
