# Two commands from a fresh clone:
#   make train   set up .venv and train the default config on the embedded corpus
#   make test    set up .venv and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/default

.PHONY: setup train test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,plots]'
	touch $@

setup: $(VENV)/.installed

train: setup
	$(PY) -m jaxtrain --config=configs/default.py --workdir=$(WORKDIR)

test: setup
	$(PY) -m pytest -n 2 --durations=15 tests

bench: setup
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs
