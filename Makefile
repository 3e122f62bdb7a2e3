# The README's commands. Each one creates .venv from pyproject.toml when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests and the demo never reach the network: wandb logs offline unless told otherwise.
export WANDB_MODE ?= offline

.PHONY: setup demo demo-family test test-all docs-check lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,eval]"
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the package with its extras

demo: $(STAMP)  ## the main job on the embedded digit-scenes data
	$(PY) -m explainer.demo

demo-family: $(STAMP)  ## after `make demo`: real-time saliency, FastSHAP and the learned in-filler beside the Explainer
	$(PY) -m explainer.demo_family

test: $(STAMP)  ## the fast test suite (exit code 5, "no tests collected", counts as a failure)
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-all: $(STAMP)  ## every test, the slow ones included
	$(PY) -m pytest -q -m "not gpu"

docs-check: $(STAMP)  ## the README's commands: parsed and links checked, then its recipes run with the data shrunk
	$(PY) -m pytest -q tests/test_readme.py -m "slow or not slow"

lint: $(STAMP)
	$(PY) -m ruff format --check explainer tests train.py evaluate.py benchmarks
	$(PY) -m ruff check explainer tests train.py evaluate.py benchmarks

clean:
	rm -rf runs results lightning_logs wandb
