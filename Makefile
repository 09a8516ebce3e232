# Everything a fresh machine needs is installed by these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHP := node_modules/.bin/configurable-http-proxy
# System-users mode runs each server as student<N>: with a Python every account may execute
# (the one of $(VENV) may sit under /root). Put STUDENT_VENV where all can reach it.
STUDENT_PYTHON ?= /usr/bin/python3
STUDENT_VENV ?= $(CURDIR)/.venv-students

.PHONY: demo test test-quick lint bench deps chromium system-users students-reach ldap-tools docker-tools seat-image clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg setup.py pyproject.toml MANIFEST.in
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

# As root, the students' Python must sit where every account can reach it: a clone in a folder
# others cannot enter (a 0700 /root or mktemp -d) stops here, first, with what to do.
students-reach:
	@if [ "$$(id -u)" = 0 ]; then d="$(abspath $(STUDENT_VENV))"; while [ "$$d" != / ]; do d=$$(dirname "$$d"); \
	  if [ -d "$$d" ] && [ $$(( 0$$(stat -c %a "$$d") & 1 )) = 0 ]; then \
	    echo "make: the students' Python would go in $(STUDENT_VENV), which other accounts cannot reach ($$d is $$(stat -c %a "$$d")): run 'chmod o+x $$d', or set STUDENT_VENV to a folder every account can enter (e.g. make test STUDENT_VENV=/opt/wod-students)" >&2; exit 1; \
	  fi; done; fi

# As root, what system-users mode and its tests need: the students' Python, and cron and at
# (the tests show that `wod users create` refuses them to students). Not root: those tests skip.
system-users: deps
	@if [ "$$(id -u)" = 0 ]; then \
	  { command -v crontab && command -v at; } >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cron at >/dev/null; }; \
	  $(MAKE) --no-print-directory $(STUDENT_VENV)/.installed; \
	else echo "system-users: not root; the system-users tests will be skipped"; fi

# Debian's Docker engine for the container runtime's tests (tests/dockerutil.py starts its own dockerd in
# namespaces of its own; the package's service is never started here) and debootstrap for the seats' image.
docker-tools:
	@if [ "$$(id -u)" = 0 ]; then \
	  { command -v dockerd && command -v containerd && command -v debootstrap; } >/dev/null || { \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null; }; \
	else echo "docker-tools: not root; the Docker tests will be skipped"; fi

# The seats' container image as a root file system for `docker import` (no registry): Debian's minimal base
# and the students' Python (share/docker/seat-rootfs.sh). Built once; rebuilt when the students' Python is.
SEAT_ROOTFS := .cache/wod-seat-rootfs.tar
$(SEAT_ROOTFS): share/docker/seat-rootfs.sh $(STUDENT_VENV)/.installed
	@mkdir -p .cache && rm -rf .cache/dockerd
	sh share/docker/seat-rootfs.sh $@ $(STUDENT_VENV)

seat-image: docker-tools system-users
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory $(SEAT_ROOTFS); \
	else echo "seat-image: not root; the Docker tests will be skipped"; fi

# ruff (the `test` extra) with the settings of pyproject.toml; `make test` runs it first.
lint: deps
	$(BIN)/ruff check .

test: students-reach deps chromium lint system-users ldap-tools seat-image
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" WOD_STUDENT_PYTHON="$(STUDENT_VENV)/bin/python" $(BIN)/pytest -q -ra $(PYTEST_ARGS)

# The tests that need neither a hub nor root, a browser or a PostgreSQL server (their SQLite variants run),
# in parallel processes: under a minute. `make test` runs everything, one test at a time.
QUICK = not hub and not root and not browser and not postgres
test-quick: deps
	$(BIN)/pytest -q -ra -n 4 -m "$(QUICK)" $(PYTEST_ARGS)

# WOD_SYSTEM_USERS=1 make demo (as root): the accounts of the demo's range, every server as its student.
demo: $(if $(filter-out 0,$(WOD_SYSTEM_USERS)),students-reach) deps $(if $(filter-out 0,$(WOD_SYSTEM_USERS)),system-users)
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" WOD_STUDENT_PYTHON="$(STUDENT_VENV)/bin/python" $(BIN)/python -m wod_jupyterhub.cli.demo

# Each benchmark runs as a module from the repository root, so it imports
# the test helpers as `tests.<module>` (see bench/__init__.py).
bench: deps
	PATH="$(CURDIR)/node_modules/.bin:$$PATH"; for b in bench/[!_]*.py; do n=$$(basename $$b .py); echo "== bench.$$n"; $(BIN)/python -m bench.$$n || exit 1; done

clean:
	rm -rf .cache $(VENV) $(STUDENT_VENV) node_modules students wod.sqlite* wod_secret.key jupyterhub.sqlite jupyterhub_cookie_secret
