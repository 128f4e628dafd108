# Everything runs inside .venv so a fresh machine needs only python3 (>= 3.10).
# torch is pinned to the CPU wheel first: a bare `pip install torch` pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,plot]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/sleep-retrofit demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check sleep_retrofit tests benchmarks

bench: setup
	$(PY) benchmarks/bench_kernels.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
