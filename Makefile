# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build these machines carry; a torch already in the venv (e.g. a CUDA build) is kept.
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=

.PHONY: venv demo test lint bench wsi-demo clean

$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-base
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q numpy setuptools wheel
	$(PY) -m pip install -q --no-build-isolation "pyradiomics==3.0.1"
	touch $@

venv: $(VENV)/.stamp-base

demo: $(VENV)/.stamp-base
	$(VENV)/bin/sarcomakit demo $(DEMO_ARGS)

wsi-demo: $(VENV)/.stamp-base
	$(VENV)/bin/sarcomakit wsi demo --out sarcomakit-wsi-demo

test: $(VENV)/.stamp-dev
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -n 2 --dist loadfile

# Each benchmark appends its table to benchmarks/RESULTS.md (nnU-Net's side needs .venv-nnunet, see the script).
bench: $(VENV)/.stamp-dev
	$(PY) benchmarks/bench_preprocessing.py
	$(PY) benchmarks/bench_training_step.py
	$(PY) benchmarks/bench_sliding_window.py
	$(PY) benchmarks/bench_wsi_tiling.py
	$(PY) benchmarks/bench_wsi_read.py
	$(PY) benchmarks/bench_wsi_embed.py

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
