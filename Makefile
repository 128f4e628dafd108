# Everything runs inside .venv so a fresh machine needs only python3 (>= 3.10).
# torch is installed first and on a machine without CUDA as the CPU build: a bare
# `pip install torch` pulls a multi-GB CUDA build. Without nvidia-smi, setup uses PyTorch's CPU
# wheel index when it answers within 5 s (and falls back if that install fails), the default
# index otherwise (where a local mirror or wheel cache may serve the CPU wheel). Override with
# TORCH_INDEX=URL, or TORCH_INDEX= for the default index.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
CPU_TORCH_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?= $(shell command -v nvidia-smi >/dev/null 2>&1 || { \
	$(PYTHON) -c "import urllib.request; urllib.request.urlopen('$(CPU_TORCH_INDEX)/torch/', timeout=5)" \
	>/dev/null 2>&1 && echo $(CPU_TORCH_INDEX); })

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@index="$(TORCH_INDEX)"; echo "installing $(TORCH) from $${index:-the default index}"; \
	if [ -n "$$index" ]; then $(PY) -m pip install -q $(TORCH) --index-url "$$index" || \
	{ echo "the CPU index failed: installing $(TORCH) from the default index"; \
	$(PY) -m pip install -q $(TORCH); }; else $(PY) -m pip install -q $(TORCH); fi
	$(PY) -m pip install -q -e '.[dev,lm-eval]'
	touch $@

setup: $(VENV)/.installed

# Convert a built-in tiny preset (random weights, no download) with sleep N=2 and a 32-token window,
# then generate from it with a prompt of ~4 windows, so chunks are consolidated and evicted.
DEMO_DIR    ?= runs/demo
DEMO_PROMPT ?= Before a chunk of context leaves the KV cache, the model sleeps on it: N recurrent passes write it into fast weights.
demo: setup
	$(VENV)/bin/sleep-retrofit convert --model tiny-jet-nemotron --out $(DEMO_DIR) --passes 2 --window 32 --overwrite
	$(VENV)/bin/sleep-retrofit generate $(DEMO_DIR) --prompt "$(DEMO_PROMPT)" --max-new-tokens 32

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check sleep_retrofit sleep_retrofit_launcher tests benchmarks recipes examples

bench: setup
	$(PY) benchmarks/bench_kernels.py
	$(PY) benchmarks/bench_sleep.py
	$(PY) benchmarks/bench_checkpointing.py
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_retention.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
