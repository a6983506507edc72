# The two entry points a new user needs; each sets up everything it needs on a fresh machine.
#   make run    the main job end to end on the default data
#   make test   install with test extras and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.carid-installed

.PHONY: run test lint clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[all,dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/carid run

test: $(STAMP)
	CARID_SLIM_TEST=1 $(BIN)/python -m pytest -n 2 --timeout 900 --durations=20

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
