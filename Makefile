# Two entry points for a fresh machine with only Python and make:
#   make demo   - set up .venv and run the embedded demo (tiny GPT-2 on stdlib docs, offline)
#   make test   - set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; override TORCH_SPEC to use another build.
TORCH_SPEC ?= torch==2.13.0
DEEPSPEED_SPEC ?= deepspeed==0.19.8
export WANDB_MODE ?= offline

.PHONY: setup demo test test-fast test-oldest lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# DeepSpeed for the ZeRO-3 tests (its CPU accelerator runs ZeRO-3 here). It ships as source only;
	# no build isolation, so it builds against the torch above (an isolated build would fetch another).
	$(BIN)/python -m pip install -q setuptools wheel
	$(BIN)/python -m pip install -q --no-build-isolation "$(DEEPSPEED_SPEC)"
	touch $@

demo: setup
	$(BIN)/ft-callbacks demo --output-dir runs/demo

lint: setup
	$(BIN)/python -m ruff check .

# The suite in parallel (one worker per core by default; each test file stays on one worker, so a
# module's server or model is built once), then the few tests that assert wall-clock bounds, alone.
TEST_WORKERS ?= auto
test: setup lint
	FT_CALLBACKS_REQUIRE_DEEPSPEED=1 $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not serial" --durations=15
	FT_CALLBACKS_REQUIRE_DEEPSPEED=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m serial

test-fast: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow and not distributed and not serial"

# The oldest transformers we support (4.46) with its matching accelerate, in a second venv: the
# smoke subset (each callback once in a real tiny run).
OLDEST_VENV ?= .venv-oldest
OLDEST_SPEC ?= "transformers==4.46.3" "accelerate==1.1.1"

$(OLDEST_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(OLDEST_VENV)/bin/python -m pip install -q -e ".[text,wandb]" $(OLDEST_SPEC) "pytest>=8"
	touch $@

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -c "import transformers; print('transformers', transformers.__version__)"
	$(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -m smoke tests/test_smoke.py

bench: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(OLDEST_VENV) runs .pytest_cache
