# Two commands from a fresh clone:
#   make train   set up .venv and train the default config on the embedded corpus
#   make test    set up .venv and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/default
# The CUDA plugin, outside the venv's import path: tests compile for an H100 with it (no GPU needed) in a child
# process, while `make train` never loads it. Pinned to the installed jax.
GPU_AOT := $(VENV)/gpu-aot

.PHONY: setup train test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,plots]'
	touch $@

setup: $(VENV)/.installed

train: setup
	$(PY) -m jaxtrain --config=configs/default.py --workdir=$(WORKDIR)

$(GPU_AOT)/.installed: $(VENV)/.installed
	v=$$($(PY) -c "import jax; print(jax.__version__)") && \
	  $(PY) -m pip install --quiet --no-deps --target $(GPU_AOT) "jax-cuda12-plugin==$$v" "jax-cuda12-pjrt==$$v"
	touch $@

test: setup $(GPU_AOT)/.installed
	JAXTRAIN_GPU_AOT=$(abspath $(GPU_AOT)) $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

bench: setup
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs
