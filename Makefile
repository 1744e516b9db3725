# radlens: two commands do all set-up on a fresh machine — `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.radlens-installed
DEMO_DIR ?= demo
DEMO_ARGS ?=

.PHONY: install browser demo test lint typecheck unit clean

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@# torch first: 2.13.0 resolves to the CPU build; anything looser pulls a CUDA build.
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	@# zennit declares torchvision (and so a CUDA torch); radlens needs neither.
	$(PIP) install --quiet --no-deps -c constraints.txt 'zennit==0.5.1'
	@touch $(STAMP)

install: $(STAMP)

# Browser tests drive Debian's Chromium through Playwright (never a browser Playwright downloads).
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# RadPhantom data (+ phantom_grid.png) → cpu-demo retrieval model → index → the web app; a second run
# reuses what exists. DEMO_ARGS="--no-serve" stops before serving, DEMO_ARGS="--port 0" takes any port.
demo: install
	$(VENV)/bin/radlens demo --out $(DEMO_DIR) $(DEMO_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks docs/examples
	$(VENV)/bin/ruff format --check src tests benchmarks docs/examples

typecheck: install
	$(VENV)/bin/mypy

unit: install browser
	$(VENV)/bin/pytest -n 2 --dist loadfile

test: lint typecheck unit

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
