# Everything a fresh machine needs is installed by these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHP := node_modules/.bin/configurable-http-proxy

.PHONY: demo test lint bench deps chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(CHP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# Debian's Chromium for the browser test; its own download would fail here.
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

deps: $(VENV)/.installed $(CHP)

# ruff (the `test` extra) with the settings of pyproject.toml; `make test` runs it first.
lint: deps
	$(BIN)/ruff check .

test: deps chromium lint
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" $(BIN)/pytest -q -ra $(PYTEST_ARGS)

demo: deps
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" $(BIN)/python -m wod_jupyterhub.demo

# Each benchmark runs as a module from the repository root, so it imports
# the test helpers as `tests.<module>` (see bench/__init__.py).
bench: deps
	PATH="$(CURDIR)/node_modules/.bin:$$PATH"; for b in bench/[!_]*.py; do n=$$(basename $$b .py); echo "== bench.$$n"; $(BIN)/python -m bench.$$n || exit 1; done

clean:
	rm -rf $(VENV) node_modules students wod.sqlite* wod_secret.key jupyterhub.sqlite jupyterhub_cookie_secret
