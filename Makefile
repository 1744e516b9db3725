# radlens: two commands do all set-up on a fresh machine — `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.radlens-installed
DEMO_DIR ?= demo

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

demo: install
	$(VENV)/bin/radlens phantom generate --out $(DEMO_DIR)/phantom --studies 48 --size 256 --seed 0 --overwrite
	$(VENV)/bin/radlens phantom show $(DEMO_DIR)/phantom --out $(DEMO_DIR)/phantom_grid.png
	@echo "RadPhantom dataset: $(DEMO_DIR)/phantom   picture grid: $(DEMO_DIR)/phantom_grid.png"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: install
	$(VENV)/bin/mypy

unit: install browser
	$(VENV)/bin/pytest -n 2 --dist loadfile

test: lint typecheck unit

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
