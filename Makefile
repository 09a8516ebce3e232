# Everything a fresh machine needs is installed by these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHP := node_modules/.bin/configurable-http-proxy

.PHONY: demo test bench deps chromium clean

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

test: deps chromium
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" $(BIN)/pytest -q -ra $(PYTEST_ARGS)

demo: deps
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" $(BIN)/python -m wod_jupyterhub.demo

bench: deps
	PATH="$(CURDIR)/node_modules/.bin:$$PATH"; for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) node_modules students wod.sqlite* wod_secret.key jupyterhub.sqlite jupyterhub_cookie_secret
