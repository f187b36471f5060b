# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build these machines carry; a torch already in the venv (e.g. a CUDA build) is kept.
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=

# Every install is constrained to the versions in the lock (torch excepted), and to the torch the venv
# already has, so that no dependency can replace it with another build. `make lock` refreshes the lock.
LOCK      ?= requirements/lock.txt
TORCH_PIN  = $(VENV)/torch-pin.txt
PIP       := $(PY) -m pip install -q -c $(LOCK)

.PHONY: web venv demo test test-latest lint typecheck lock lock-upgrade bench wsi-demo clean image image-cuda \
	image-site image-test

$(VENV)/.stamp-base: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) "$(TORCH_SPEC)"
	$(PY) -c "from importlib.metadata import version; print('torch==' + version('torch'))" > $(TORCH_PIN)
	$(PIP) -c $(TORCH_PIN) -e .
	touch $@

# MONAI Label's Python client, for the server's compatibility test: installed without its dependencies (they
# include torch, MONAI and a server stack; its client needs only requests, a dev dependency). Not in the lock,
# which would resolve those dependencies. The browser test needs Debian's chromium: installed here when missing
# and when apt is usable (as root); without it that test skips.
MONAILABEL_SPEC ?= monailabel==0.8.5
$(VENV)/.stamp-dev: $(VENV)/.stamp-base
	$(PIP) -c $(TORCH_PIN) -e ".[dev]" numpy setuptools wheel
	$(PIP) -c $(TORCH_PIN) --no-build-isolation "pyradiomics==3.0.1"
	$(PIP) -c $(TORCH_PIN) --no-deps "$(MONAILABEL_SPEC)"
	-command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } || \
		echo "chromium is not installed: the browser test will skip"
	touch $@

venv: $(VENV)/.stamp-base

# The browser app's NiiVue bundle, src/sarcomakit/server/static/niivue.js, built from the npm packages locked
# in web/package-lock.json. The built file is committed (users need no Node.js); rebuild after changing
# web/package.json.
web:
	cd web && npm ci --no-audit --no-fund && npm run build

demo: $(VENV)/.stamp-base
	$(VENV)/bin/sarcomakit demo $(DEMO_ARGS)

wsi-demo: $(VENV)/.stamp-base
	$(VENV)/bin/sarcomakit wsi demo --out sarcomakit-wsi-demo

test: $(VENV)/.stamp-dev
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -n 2 --dist loadfile

# Early warning: the newest releases of every dependency (torch excepted: TORCH_SPEC, kept once installed),
# in a venv of their own; a failure here and not in `make test` means the lock is holding a break back.
LATEST_VENV ?= .venv-latest
LATEST_PY   := $(LATEST_VENV)/bin/python
test-latest:
	test -x $(LATEST_PY) || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_PY) -m pip install -q --upgrade pip
	$(LATEST_PY) -c "import torch" 2>/dev/null || $(LATEST_PY) -m pip install -q "$(TORCH_SPEC)"
	$(LATEST_PY) -c "from importlib.metadata import version; print('torch==' + version('torch'))" \
		> $(LATEST_VENV)/torch-pin.txt
	$(LATEST_PY) -m pip install -q -c $(LATEST_VENV)/torch-pin.txt --upgrade --upgrade-strategy eager \
		-e ".[dev]" numpy setuptools wheel
	$(LATEST_PY) -m pip install -q -c $(LATEST_VENV)/torch-pin.txt --no-build-isolation "pyradiomics==3.0.1"
	$(LATEST_PY) -m pip install -q --no-deps --upgrade monailabel
	$(LATEST_PY) -m pip list --format=freeze --exclude-editable > $(LATEST_VENV)/versions.txt
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(LATEST_PY) -m pytest -n 2 --dist loadfile

# Refresh the lock with uv (installed into a throwaway venv) after changing pyproject.toml's dependencies:
# `make lock` keeps the current pins where they still fit, `make lock-upgrade` moves everything to the newest
# releases (then run `make test`). The lock is for Linux x86_64 and Python 3.11, the machines CI runs on.
# torch is resolved as the CPU build (from the pip config's find-links, which holds it on these machines,
# else PyTorch's CPU wheel page) so that no CUDA package enters the lock, and is not written to it.
UV_VERSION   ?= 0.13.9
LOCK_VENV    ?= .venv-lock
TORCH_WHEELS ?= $(or $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null),\
                     https://download.pytorch.org/whl/cpu/torch/)
LOCK_ARGS    ?=
lock:
	test -x $(LOCK_VENV)/bin/uv || ($(PYTHON) -m venv $(LOCK_VENV) && \
		$(LOCK_VENV)/bin/python -m pip install -q "uv==$(UV_VERSION)")
	echo "$(TORCH_SPEC)" > $(LOCK_VENV)/torch.txt
	$(LOCK_VENV)/bin/uv pip compile pyproject.toml requirements/lock.in --extra dev --extra radiomics \
		--constraints $(LOCK_VENV)/torch.txt --find-links $(TORCH_WHEELS) --no-emit-package torch \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--custom-compile-command "make lock" --quiet $(LOCK_ARGS) -o $(LOCK)
	! grep -iE '^(nvidia|triton|cuda)' $(LOCK) || (echo "the lock holds CUDA packages: torch was not resolved as the CPU build (set TORCH_WHEELS)" && false)

lock-upgrade:
	$(MAKE) lock LOCK_ARGS=--upgrade

# ruff, then the type checker (mypy on src/, configured in pyproject.toml).
lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(MAKE) --no-print-directory typecheck

typecheck: $(VENV)/.stamp-dev
	$(VENV)/bin/mypy

# Each benchmark appends its table to benchmarks/RESULTS.md (nnU-Net's side needs .venv-nnunet, see the script).
bench: $(VENV)/.stamp-dev
	$(PY) benchmarks/bench_preprocessing.py
	$(PY) benchmarks/bench_training_step.py
	$(PY) benchmarks/bench_sliding_window.py
	$(PY) benchmarks/bench_wsi_tiling.py
	$(PY) benchmarks/bench_wsi_read.py
	$(PY) benchmarks/bench_wsi_embed.py

# Container images (docs/containers.md), with podman, buildah or Docker, whichever is found (TOOL=...).
# `make image`: the CPU cli and server images. The base is python:3.11-slim-bookworm from a registry, or,
# with BASE_IMAGE=local or when that cannot be pulled, a Debian base built here with debootstrap (root).
# `make image-cuda`: the same with a CUDA torch; `make image-site`: the federated site (sarcomakit + Flower).
# `make image-test`: builds the CPU images and smoke-tests them (minutes; not part of `make test`);
# RECORD=1 appends its figures to benchmarks/RESULTS.md.
BASE_IMAGE    ?=
IMAGE_TARGETS ?= cli server
IMAGE_ENV      = BASE_IMAGE="$(BASE_IMAGE)" TORCH_VERSION="$(patsubst torch==%,%,$(TORCH_SPEC))"
image:
	$(IMAGE_ENV) VARIANT=cpu TARGETS="$(IMAGE_TARGETS)" containers/image.sh

image-cuda:
	$(IMAGE_ENV) VARIANT=cuda TARGETS="$(IMAGE_TARGETS)" containers/image.sh

image-site:
	$(IMAGE_ENV) VARIANT=cpu TARGETS=federated-site containers/image.sh

image-test:
	$(IMAGE_ENV) RECORD="$(RECORD)" containers/image-test.sh

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
