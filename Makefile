# Two entry points for a fresh machine with only Python and make:
#   make demo   - set up .venv and run the embedded demo (tiny GPT-2 on stdlib docs, offline)
#   make test   - set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; override TORCH_SPEC to use another build.
TORCH_SPEC ?= torch==2.13.0
export WANDB_MODE ?= offline

.PHONY: setup demo test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/ft-callbacks demo --output-dir runs/demo

lint: setup
	$(BIN)/python -m ruff check .

test: setup lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not distributed"

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
