# ModelMarket. The README's two commands are `make run` and `make test`; each first
# runs `make setup`, which installs only what is missing.

SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION   := 0.13.9
PYTHON       ?= python3
UV           := $(shell command -v uv 2>/dev/null)
# Debian packages the test tiers and benchmarks use: PostgreSQL, Chromium (browser
# tests), wrk (HTTP load for bench.gateway).
DEB_PACKAGES := postgresql chromium wrk
export UV_PYTHON_DOWNLOADS := never

.PHONY: help setup uv-bin deb-packages run test lint pytest contracts-test bench bench-peers compile clean

help:
	@echo "make run    start the embedded default (anvil + contracts), Ctrl-C to stop"
	@echo "make test   lint, the app's tests, the contract tests"
	@echo "make bench  the benchmarks (bench/*.py)"

setup: .venv/.synced contracts/.venv/.synced node_modules/.package-lock.json deb-packages

# uv itself: from PyPI with pip, only when it is not on PATH.
uv-bin:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"

# --compile-bytecode: these machines (and the image) set PYTHONDONTWRITEBYTECODE, so without
# it every process compiled web3, onnx, sqlalchemy... from source: ~2 s per CLI command.
.venv/.synced: pyproject.toml uv.lock | uv-bin
	uv sync --locked --quiet --compile-bytecode
	@touch $@

contracts/.venv/.synced: contracts/pyproject.toml contracts/uv.lock | uv-bin
	cd contracts && uv sync --locked --quiet --compile-bytecode
	@touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

deb-packages:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

run: setup
	.venv/bin/modelmarket run

test: setup lint contracts-test pytest

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

contracts-test:
	contracts/brownie.sh test

pytest:
	.venv/bin/pytest

bench: setup
	.venv/bin/python -m bench.gas
	.venv/bin/python -m bench.storage
	.venv/bin/python -m bench.inference
	.venv/bin/python -m bench.indexer
	.venv/bin/python -m bench.gateway
	.venv/bin/python -m bench.cores
	.venv/bin/python -m bench.receipts
	.venv/bin/python -m bench.load
	.venv/bin/python -m bench.rerun
	.venv/bin/python -m bench.profile

# Peer model servers for bench.load (MLServer, BentoML), one venv each, outside the
# runtime's dependencies: .bench-peers/<name> from bench/peers/<name>/requirements.txt.
bench-peers: | uv-bin
	@for p in mlserver bentoml; do \
	  uv venv --quiet --allow-existing --python python3.11 .bench-peers/$$p && \
	  uv pip install --quiet --python .bench-peers/$$p/bin/python \
	    -r bench/peers/$$p/requirements.txt || exit 1; \
	done

compile: setup
	.venv/bin/python contracts/compile.py

clean:
	rm -rf .venv contracts/.venv contracts/build contracts/.brownie-home node_modules .modelmarket
