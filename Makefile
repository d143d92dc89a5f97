# `make install` builds .venv/ with the package (editable) and its test extras.
# TORCH pins the PyTorch release installed first; pip then keeps it. On a CPU-only machine with a
# local CPU wheel it installs in seconds; elsewhere the same pin takes the regular (CUDA) build from PyPI.
# Override for another build, e.g. `make install TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint format test demo benchmarks clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test,project]"
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: install
	cd project && ../$(BIN)/python -m spacy project run all

benchmarks: install
	$(BIN)/python benchmarks/inference.py

clean:
	rm -rf $(VENV) build *.egg-info
