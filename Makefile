# `make serve` and `make test` set up everything they need on a fresh Debian or macOS machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OPENBLAS := /usr/lib/$(shell uname -m)-linux-gnu/libopenblas.so.0
# Tests that run MLX in-process get OpenBLAS too, its idle threads sleeping (served processes
# set both themselves: cluster/launch/blas.py).
PRELOAD   = $(if $(wildcard $(OPENBLAS)),LD_PRELOAD=$(OPENBLAS) OPENBLAS_THREAD_TIMEOUT=4,)

.PHONY: serve test test-unit test-slow lint format os-deps venv clean

os-deps:
	@if [ "$$(uname)" = Linux ] && command -v apt-get >/dev/null; then \
	  need=""; \
	  [ -e "$(OPENBLAS)" ] || need="$$need libopenblas0-pthread"; \
	  command -v prometheus >/dev/null || need="$$need prometheus"; \
	  command -v rsync >/dev/null || need="$$need rsync"; \
	  if [ -n "$$need" ]; then \
	    echo "installing OS packages:$$need"; \
	    $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$need >/dev/null; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: os-deps $(STAMP)

serve: venv
	$(PY) -m cluster serve $(ARGS)

test: venv
	$(PY) -m ruff check cluster tests scripts
	$(PY) -m ruff format --check cluster tests scripts
	$(PRELOAD) $(PY) -m pytest -q --durations=15

test-unit: venv
	$(PY) -m pytest -q tests/unit

test-slow: venv
	$(PRELOAD) $(PY) -m pytest -q -m slow

lint: venv
	$(PY) -m ruff check cluster tests scripts

format: venv
	$(PY) -m ruff format cluster tests
	$(PY) -m ruff check --fix cluster tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
