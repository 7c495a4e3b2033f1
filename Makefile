# Entry points. `make demo` runs the main job on embedded defaults; `make test` runs the tests.
# Both install what they need on first use (scripts/setup-env.sh is a no-op when nothing changed).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-stop test test-slow lint lock

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

lint: setup
	@$(VENV)/bin/ruff check .

lock:
	@scripts/lock.sh
