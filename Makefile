# capsprobe: `make demo` runs the main job on the embedded MNIST sample, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.capsprobe-installed

.PHONY: install test demo train bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

# train a CapsNet and resnet18, perturb with the whole suite, write reports/demo (the committed example)
demo: $(STAMP)
	$(BIN)/capsprobe demo --force

train: $(STAMP)
	$(BIN)/capsprobe train --model capsnet --dataset mnist-sample --out runs/capsnet-mnist-sample-seed0 --resume

bench: $(STAMP)
	$(BIN)/capsprobe bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
