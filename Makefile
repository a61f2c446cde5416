# Two commands from a clean clone: `make demo` and `make test`.
# Each creates .venv on first use. TORCH_SPEC pins the CPU build of PyTorch that this
# kind of machine carries; override it for a GPU machine, e.g.
#   make test TORCH_SPEC="torch==2.13.0" PIP_EXTRA="--index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA ?=
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint install bench clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test,lab,dev]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/gradhealth demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# the inner loop: everything but the tests marked slow (lab, demo, distributed, Chromium,
# torch.compile), which `make test` runs too
test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

# lint, import order and the type check (configured in pyproject.toml)
lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/probe_accuracy.py
	$(BIN)/python benchmarks/probe_cost.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
