# One command sets up and runs the product; one sets up and checks everything (CI runs it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup run check bench clean

$(BIN)/.installed: pyproject.toml agents/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

# The embedded default: this machine is the only host; the control plane runs for the duration.
run: setup
	$(BIN)/bitinglip tasks submit echo --payload '{"hello": "BitingLip"}' --wait
	$(BIN)/bitinglip status

check: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

bench: setup
	$(BIN)/python tests/bench/huey_compare.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
