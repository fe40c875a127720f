# One-command set-up on a fresh machine (Python 3.11). See README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TRITON_VENV := .venv-triton
UV := $(BIN)/uv pip install --python $(BIN)/python
HOST ?= 127.0.0.1
PORT ?= 3000
VERSION ?=

.PHONY: fuzz test-unit bench-ort-arena serve test lint bench soak bench-serving bench-xrd bench-ebsd bench-scattering triton triton-env redis-server train-formation-enthalpy train-xrd train-ebsd train-scattering clean

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

# Local Triton: its own venv (nvidia-pytriton needs numpy < 2), see requirements/triton.txt.
$(TRITON_VENV)/.installed: $(BIN)/uv requirements/triton.txt pyproject.toml
	$(PYTHON) -m venv $(TRITON_VENV)
	$(UV:$(BIN)/python=$(TRITON_VENV)/bin/python) --quiet -r requirements/triton.txt
	$(UV:$(BIN)/python=$(TRITON_VENV)/bin/python) --quiet --no-deps -e .
	touch $@

# The test suite starts a real redis-server; install it from Debian when it is missing (needs root).
redis-server:
	@command -v redis-server >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)

serve: $(VENV)/.serve-installed
	$(BIN)/matserve serve --host $(HOST) --port $(PORT)

test: $(VENV)/.test-installed $(TRITON_VENV)/.installed redis-server
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -ra

# Fast in-process tests (tests/unit): no Triton, no Redis, no server subprocess; routers via httpx.ASGITransport.
test-unit: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -ra -m unit tests/unit

triton-env: $(TRITON_VENV)/.installed

triton: $(VENV)/.serve-installed $(TRITON_VENV)/.installed
	$(BIN)/matserve triton serve

bench: $(VENV)/.test-installed
	$(BIN)/python bench/bench_formation_enthalpy.py

# XRD phase classifier and novelty scorer: patterns/s in-process (tensor, codec+model, resampling) and over HTTP.
bench-xrd: $(VENV)/.test-installed
	PYTHONPATH=. $(BIN)/python bench/bench_xrd.py

# EBSD indexer: patterns/s in-process and over HTTP at batch 1 and 1024, next to Hough and dictionary indexing.
bench-ebsd: $(VENV)/.test-installed
	PYTHONPATH=. $(BIN)/python bench/bench_ebsd.py

# Scattering sorter: images/s end to end (decode + preprocess + model) for 195x487, 1043x981 and 1679x1475 images.
bench-scattering: $(VENV)/.test-installed
	PYTHONPATH=. $(BIN)/python bench/bench_scattering.py

# Every serving path side by side (in-process ORT, BentoML, BentoML -> Triton, Triton HTTP/gRPC).
bench-serving: $(VENV)/.test-installed $(TRITON_VENV)/.installed
	$(BIN)/python bench/bench_serving_paths.py

# Soak (never run by CI): 4 phases of mixed traffic at concurrency 64 (steady; Redis SIGKILLed; active versions
# switched; API SIGKILLed mid-job), real redis-server + matserve serve; writes bench/results/soak.json, exit 1 on failure.
soak: $(VENV)/.test-installed redis-server
	PYTHONPATH=. $(BIN)/python bench/soak.py --duration-s 60 --concurrency 64

# ONNX Runtime with and without its memory arena (the server runs without), side by side.
bench-ort-arena: $(VENV)/.test-installed
	$(BIN)/python bench/bench_ort_arena.py

# Long OpenAPI fuzz (never run by CI; CI runs a bounded one in tests/integration/test_fuzz_openapi.py): schemathesis with a
# new random seed per run, N examples per operation and phase, run after run until MIN (10,000) requests, against a fresh server.
fuzz: $(VENV)/.test-installed
	PYTHONPATH=. $(BIN)/python bench/fuzz.py -n $(or $(N),250) --min-requests $(or $(MIN),10000)

# Offline training (never run by CI): RF baselines, then ElemNet reference + served IRNet ensemble + export.
train-formation-enthalpy: $(VENV)/.test-installed
	@test -n "$(VERSION)" || (echo "usage: make train-formation-enthalpy VERSION=1.1.0" && exit 2)
	PYTHONUNBUFFERED=1 $(BIN)/python -m training.formation_enthalpy.baselines
	PYTHONUNBUFFERED=1 $(BIN)/python -m training.formation_enthalpy.train --version $(VERSION)

# Offline (never run by CI): simulate the XRD datasets (~1 min) unless present, train and export both XRD models.
train-xrd: $(VENV)/.test-installed
	@test -n "$(VERSION)" || (echo "usage: make train-xrd VERSION=1.1.0" && exit 2)
	PYTHONUNBUFFERED=1 $(BIN)/python -m training.xrd.train --version $(VERSION)

# Offline (never run by CI): simulate the EBSD datasets (~30 min) unless present, train (MINUTES, default 55),
# export and evaluate; then the classical baselines on the same held-out patterns, merged into the card.
MINUTES ?= 55
train-ebsd: $(VENV)/.test-installed
	@test -n "$(VERSION)" || (echo "usage: make train-ebsd VERSION=1.1.0 [MINUTES=55]" && exit 2)
	PYTHONUNBUFFERED=1 $(BIN)/python -m training.ebsd.train --version $(VERSION) --minutes $(MINUTES)
	PYTHONUNBUFFERED=1 $(BIN)/python -m training.ebsd.baselines --card models/ebsd_indexer/$(VERSION)

# Offline (never run by CI): simulate the scattering datasets (~20 min) unless present, train both networks
# (the served CNN and the seed's LeNet) plus the histogram-feature baseline, export and evaluate. This is the
# from-scratch 1.1.0 recipe; the active version continues from earlier versions' weights in stages, whose
# commands are in training/scattering/README.md.
train-scattering: $(VENV)/.test-installed
	@test -n "$(VERSION)" || (echo "usage: make train-scattering VERSION=1.1.0" && exit 2)
	test -f training/scattering/runs/data_seed0/manifest.json || PYTHONUNBUFFERED=1 $(BIN)/python -m training.scattering.simulate
	PYTHONUNBUFFERED=1 $(BIN)/python -m training.scattering.train --version $(VERSION)

clean:
	rm -rf $(VENV) $(TRITON_VENV) .pytest_cache .ruff_cache
