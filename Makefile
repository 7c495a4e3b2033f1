# Entry points. `make demo` runs the main job on embedded defaults; `make test` runs the tests.
# Both install what they need on first use (scripts/setup-env.sh is a no-op when nothing changed).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-stop test test-slow test-chaos lint lock images compose-up compose-down kfp-compile

setup:
	@scripts/setup-env.sh

demo: setup
	@$(VENV)/bin/fraudctl demo run

demo-stop: setup
	@$(VENV)/bin/fraudctl demo stop

test: setup
	@$(PY) -m pytest

test-slow: setup
	@$(PY) -m pytest -m slow

# End-to-end chaos (chaos/README.md): five runs of 100,000 events through every service on a 3-broker
# embedded cluster, with kill -9s, broker bounces and a model server outage. Not part of `make test`.
CHAOS_ARGS ?=
test-chaos: setup
	@$(PY) -m chaos $(CHAOS_ARGS)

lint: setup
	@$(VENV)/bin/ruff check .

lock:
	@scripts/lock.sh

# Container images, the compose stack and the Kubeflow V2 pipeline (deploy/README.md). `make images` builds
# fraud-tfx-{base,kafka,services,pipeline}:$(IMAGE_TAG) with the local Docker engine (installed and started
# by scripts/install-docker.sh when missing) and also tags them $(REGISTRY)<name>:$(IMAGE_TAG), the names
# the prod overlay pulls; KFP_ROOT is the object-store root the pipeline runs under.
REGISTRY ?= europe-docker.pkg.dev/fraud-tfx-prod/fraud/
IMAGE_TAG ?= 0.1.0
KFP_ROOT ?= gs://fraud-tfx-prod/fraud
KFP_OUTPUT ?= var/kfp/fraud_pipeline.json

images:
	@IMAGE_TAG=$(IMAGE_TAG) REGISTRY=$(REGISTRY) scripts/images.sh

compose-up:
	@FRAUD_IMAGE_TAG=$(IMAGE_TAG) scripts/compose.sh up

compose-down:
	@scripts/compose.sh down

kfp-compile: setup
	@$(PY) -m pipeline.kubeflow_v2_runner --image $(REGISTRY)fraud-tfx-pipeline:$(IMAGE_TAG) --root $(KFP_ROOT) --output $(KFP_OUTPUT)
