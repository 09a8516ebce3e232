# Everything a fresh machine needs is installed by these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHP := node_modules/.bin/configurable-http-proxy
# System-users mode runs each server as student<N>: with a Python every account may execute
# (the one of $(VENV) may sit under /root). Put STUDENT_VENV where all can reach it.
STUDENT_PYTHON ?= /usr/bin/python3
STUDENT_VENV ?= $(CURDIR)/.venv-students

.PHONY: demo test lint bench deps chromium system-users ldap-tools clean

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

# Debian's OpenLDAP server and clients for tests/test_ldap.py (each test starts its own slapd on loopback;
# no_configuration: the package makes no directory of its own), and what the compiled scripts need and
# their tests use: a C compiler, strace and gdb.
ldap-tools:
	@if [ "$$(id -u)" = 0 ]; then \
	  { test -x /usr/sbin/slapd && command -v ldapwhoami && command -v cc && command -v strace && command -v gdb; } >/dev/null || { \
	    echo "slapd slapd/no_configuration boolean true" | debconf-set-selections; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slapd ldap-utils gcc libc6-dev strace gdb >/dev/null; }; \
	else echo "ldap-tools: not root; the tests needing slapd or root will be skipped"; fi

# The students' Python: the hub's versions of jupyterhub, jupyterlab and ipykernel, readable by all.
$(STUDENT_VENV)/.installed: $(VENV)/.installed
	$(STUDENT_PYTHON) -m venv $(STUDENT_VENV)
	$(STUDENT_VENV)/bin/pip install -q --upgrade pip
	$(STUDENT_VENV)/bin/pip install -q $$($(BIN)/pip freeze | grep -iE '^(jupyterhub|jupyterlab|ipykernel)==')
	chmod -R a+rX $(STUDENT_VENV)
	touch $@

# As root, what system-users mode and its tests need: the students' Python, and cron and at
# (the tests show that `wod users create` refuses them to students). Not root: those tests skip.
system-users: deps
	@if [ "$$(id -u)" = 0 ]; then \
	  { command -v crontab && command -v at; } >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cron at >/dev/null; }; \
	  $(MAKE) --no-print-directory $(STUDENT_VENV)/.installed; \
	else echo "system-users: not root; the system-users tests will be skipped"; fi

# ruff (the `test` extra) with the settings of pyproject.toml; `make test` runs it first.
lint: deps
	$(BIN)/ruff check .

test: deps chromium lint system-users ldap-tools
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" WOD_STUDENT_PYTHON="$(STUDENT_VENV)/bin/python" $(BIN)/pytest -q -ra $(PYTEST_ARGS)

# WOD_SYSTEM_USERS=1 make demo (as root): the accounts of the demo's range, every server as its student.
demo: deps $(if $(filter-out 0,$(WOD_SYSTEM_USERS)),system-users)
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" WOD_STUDENT_PYTHON="$(STUDENT_VENV)/bin/python" $(BIN)/python -m wod_jupyterhub.demo

# Each benchmark runs as a module from the repository root, so it imports
# the test helpers as `tests.<module>` (see bench/__init__.py).
bench: deps
	PATH="$(CURDIR)/node_modules/.bin:$$PATH"; for b in bench/[!_]*.py; do n=$$(basename $$b .py); echo "== bench.$$n"; $(BIN)/python -m bench.$$n || exit 1; done

clean:
	rm -rf $(VENV) $(STUDENT_VENV) node_modules students wod.sqlite* wod_secret.key jupyterhub.sqlite jupyterhub_cookie_secret
