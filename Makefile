# Two commands from a clean clone: `make demo` and `make test`.
# Each creates .venv on first use. TORCH_SPEC pins the CPU build of PyTorch that this
# kind of machine carries; override it for a GPU machine, e.g.
#   make test TORCH_SPEC="torch==2.13.0" PIP_EXTRA="--index-url <your CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA ?=
BIN := $(VENV)/bin

.PHONY: demo test install bench clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test,lab]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/gradhealth demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/probe_accuracy.py
	$(BIN)/python benchmarks/probe_cost.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
