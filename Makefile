# capsprobe: `make demo` runs the main job on the embedded MNIST sample, `make test` runs the tests.
# `make test-package`: build the wheel, install it in a fresh venv, run `capsprobe demo --size tiny` from elsewhere.
# `make lint`: ruff, mypy and the import-linter layer contracts; `make test-fast`: the tests that train nothing.
# `make docs`: the documentation site, offline, into site/ (mkdocs build --strict).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.capsprobe-installed

.PHONY: install test test-fast test-package lint docs demo train bench gpu-pack clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# one worker process per core (pytest-xdist, a test file to a worker: its session fixtures are built where they are
# used), each with one BLAS/OpenMP and one torch thread: the suite's models are tiny, and two threads on two busy
# cores only contend. Measured 2026-12-08 from a clean clone (1,381 tests, `capsprobe bench` capsnet_small 1,146
# img/s): 216 s with two workers, 323 s in one process.
test: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile -m "not package"

# no training, no end-to-end run: under 90 s on 2 cores
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not trains and not package"

# the wheel built from the checkout, installed in a fresh venv and run from another folder (tests/test_package.py,
# offline: this venv's setuptools builds it, the venv's packages serve as its dependencies); about 45 s on 2 cores
test-package: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -m package tests/test_package.py

lint: $(STAMP)
	$(BIN)/ruff check capsprobe tests
	$(BIN)/mypy
	$(BIN)/lint-imports

# the documentation site (mkdocs.yml, docs/): the `docs` extra is installed into the venv when it is missing (pip, the
# one step that needs the package registry); the build itself is offline and --strict (a broken link, a missing page,
# a docstring mkdocstrings cannot read fail it). docs/gen_pages.py fills the generated parts of the pages.
DOCS_STAMP := $(VENV)/.capsprobe-docs-installed

$(DOCS_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null || $(BIN)/pip install -e ".[dev,docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# train a CapsNet and resnet18, perturb with the whole suite, write reports/demo (the committed example)
demo: $(STAMP)
	$(BIN)/capsprobe demo --force

train: $(STAMP)
	$(BIN)/capsprobe train --model capsnet --dataset mnist-sample --out runs/capsnet-mnist-sample-seed0 --resume

bench: $(STAMP)
	$(BIN)/capsprobe bench

# what experiments/gpu.sh needs on a lent GPU machine (Python 3.12 there, with torch, timm, typer, seaborn, pandas,
# pyarrow, safetensors, numpy, scipy, scikit-learn): the wheels of the modules it lacks, for Python 3.12 (gpu.sh
# installs one only where its module is missing), and MNIST gzipped; about 16 MB, under the device tool's 64 MiB carry
GPU_WHEELS := kornia==0.9.0 kornia-rs==0.2.0 mlxtend==0.25.0 adversarial-robustness-toolbox==1.20.1 six tqdm
gpu-pack:
	rm -rf .gpu && mkdir -p .gpu/wheels .gpu/MNIST/raw
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    -d .gpu/wheels $(GPU_WHEELS)
	for f in ../shared/data/MNIST/raw/*-ubyte; do gzip -c "$$f" > .gpu/MNIST/raw/$$(basename "$$f").gz; done

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
