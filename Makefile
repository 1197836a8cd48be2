# Two entry points: `make quickstart` and `make test`. Both create .venv when missing, install a
# pinned CPU build of torch first (an unpinned torch pulls a multi-GB CUDA build), then the package.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: quickstart test test-all bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(BIN)/roberta quickstart --out runs/quickstart

# the fast suite by default; CI=true (set by .ci/run and by most CI services) or `make test-all` adds
# the tests marked slow (torch.compile on CPU, multi-process gloo, real signals, the 50 MB file)
test: install
	$(BIN)/python -m pytest -q tests $(if $(filter true,$(CI)),,-m "not slow")

test-all: install
	$(BIN)/python -m pytest -q tests

bench: install
	$(BIN)/python benchmarks/masking_bench.py
	$(BIN)/python benchmarks/train_bench.py
	$(BIN)/python benchmarks/prepare_bench.py

clean:
	rm -rf $(VENV) runs .pytest_cache
