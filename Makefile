# Two commands: `make serve` sets everything up and serves; `make test` sets up and tests.
# Everything lives in the project: .venv/ (packages) and .bentoml/ (the model store).

PYTHON ?= python3.11
HOST ?= 0.0.0.0
PORT ?= 3000
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK := true
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup model serve test lint format bench build clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

# The default model, imported into the project's store unless the current recipe already is.
model: $(STAMP)
	$(BIN)/python model_import.py --if-missing

serve: model
	exec $(BIN)/bentoml serve service:DeepfakeDetector --host $(HOST) --port $(PORT)

# The browser tests' Chromium (apt, as root) and selenium, and the scale-out tests' redis-server
# (apt), when missing (quick when present).
# Three pytest workers (pytest-xdist), whole files each: a file's servers and models stay in one
# worker, and much of a test's time is spent waiting on a server, not on the CPU, so three beat
# two even on two cores (157-159 s against 172-207 s for `make test` on a 2-core machine).
TEST_WORKERS ?= 3
test: $(STAMP)
	VENV=$(VENV) bash scripts/setup-browser.sh
	bash scripts/setup-redis.sh
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The speed report (bench/suite.py): the server against its own in-process limit, ~15 min.
bench: model
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/suite.py $(BENCH_ARGS)

# A Bento (code + pinned packages + the model) that `bentoml serve <tag>` and containerize use.
build: model
	$(BIN)/bentoml build

clean:
	rm -rf .pytest_cache .ruff_cache

# ---- Container image (deploy/README.md) ----
# `make base-image image image-smoke`: Docker where an engine runs, else buildah + podman
# (installed with apt; their state stays in .oci-build/).
IMAGE_TAG ?= deepfake-detector:latest

.PHONY: base-image image image-smoke

# python:3.11-slim built from the apt mirror, for hosts that reach no container registry.
base-image:
	bash deploy/scripts/base-image.sh

# bentoml build + bentoml containerize; the model (DEEPFAKE_MODEL_TAG, default the latest
# import) is packed into the image. Without a Docker engine or a registry it builds the base
# image first (base-image), by itself.
image: model
	IMAGE_TAG='$(IMAGE_TAG)' bash deploy/scripts/image.sh

# Run the image with no network, wait for /readyz, post a face photo, check the answer.
image-smoke:
	IMAGE_TAG='$(IMAGE_TAG)' bash deploy/scripts/image-smoke.sh
