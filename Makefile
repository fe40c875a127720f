# One-command set-up on a fresh machine (Python 3.11). See README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv pip install --python $(BIN)/python
HOST ?= 127.0.0.1
PORT ?= 3000
VERSION ?=

.PHONY: serve test lint bench train-formation-enthalpy clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==0.13.8

# Serving install: no TensorFlow.
$(VENV)/.serve-installed: $(BIN)/uv requirements/serve.txt pyproject.toml clients/pyproject.toml
	$(UV) --quiet -r requirements/serve.txt -e clients -e .
	touch $@

# Test install: serving + training stack (tiny pipeline test trains a model) + pytest/ruff.
$(VENV)/.test-installed: $(VENV)/.serve-installed requirements/test.txt requirements/train.txt
	$(UV) --quiet -r requirements/test.txt -e clients -e .
	touch $@

serve: $(VENV)/.serve-installed
	$(BIN)/matserve serve --host $(HOST) --port $(PORT)

test: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -ra

bench: $(VENV)/.serve-installed
	$(BIN)/python bench/bench_formation_enthalpy.py

# Offline training (never run by CI): RF baselines, then ElemNet reference + served IRNet ensemble + export.
train-formation-enthalpy: $(VENV)/.test-installed
	@test -n "$(VERSION)" || (echo "usage: make train-formation-enthalpy VERSION=1.1.0" && exit 2)
	PYTHONUNBUFFERED=1 $(BIN)/python -m training.formation_enthalpy.baselines
	PYTHONUNBUFFERED=1 $(BIN)/python -m training.formation_enthalpy.train --version $(VERSION)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
