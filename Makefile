# Everything a fresh machine needs is installed by these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHP := node_modules/.bin/configurable-http-proxy
# System-users mode runs each server as student<N>: with a Python every account may execute
# (the one of $(VENV) may sit under /root). As root in a clone other accounts cannot enter (a 0700
# /root, mktemp -d) it goes in a folder of root's under /opt, one per clone; else beside the code.
STUDENT_PYTHON ?= /usr/bin/python3
CLOSED_CLONE := $(shell [ "$$(id -u)" = 0 ] && d="$(CURDIR)" && while [ "$$d" != / ]; do   [ $$(( 0$$(stat -c %a "$$d") & 1 )) = 0 ] && { echo yes; break; }; d=$$(dirname "$$d"); done)
STUDENT_VENV ?= $(if $(CLOSED_CLONE),/opt/wod-jupyterhub/students-$(shell printf %s "$(CURDIR)" | md5sum | cut -c1-12),$(CURDIR)/.venv-students)

# Debian's packages, never a question: a configuration file a test or an admin changed (the tests write
# /etc/at.deny) is kept, where dpkg would otherwise stop at its prompt and leave the package half set up.
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold

.PHONY: demo test test-quick lint bench deps chromium system-users students-reach ldap-tools labextension docker-tools seat-image clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.cfg setup.py pyproject.toml MANIFEST.in
	$(BIN)/pip install -q -e '.[test]'
	@$(call drop-unused,$(BIN)/python)
	touch $@

# The optional modules that c.WodSpawner.skip_imports keeps out of every single-user server (its help text
# says which and why; this list and its default are one, tests/hub/test_spawner.py checks it). A production
# virtualenv keeps them installed and the option leaves them out of the servers only; here neither Python
# keeps them, so the hub, the wod commands and the tests go without them too. $(1): the Python of a venv.
UNUSED_MODULES := rfc3987_syntax
drop-unused = { for m in $(UNUSED_MODULES); do $(1) -c "import importlib.util as u, sys; sys.exit(u.find_spec('$$m') is None)" && $(1) -m pip uninstall -q -y "$$m"; done; true; }

$(CHP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# Debian's Chromium for the browser test; its own download would fail here.
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && $(APT_INSTALL) chromium >/dev/null; }

deps: $(VENV)/.installed $(CHP)
	@$(call drop-unused,$(BIN)/python)

# Debian's OpenLDAP server and clients for tests/test_ldap.py (each test starts its own slapd on loopback;
# no_configuration: the package makes no directory of its own), and what the compiled scripts need and
# their tests use: a C compiler, strace and gdb.
ldap-tools:
	@if [ "$$(id -u)" = 0 ]; then \
	  { test -x /usr/sbin/slapd && command -v ldapwhoami && command -v cc && command -v strace && command -v gdb; } >/dev/null || { \
	    echo "slapd slapd/no_configuration boolean true" | debconf-set-selections; \
	    apt-get update -qq && $(APT_INSTALL) slapd ldap-utils gcc libc6-dev strace gdb >/dev/null; }; \
	else echo "ldap-tools: not root; the tests needing slapd or root will be skipped"; fi

# The session bar, a JupyterLab extension (labextension/): its npm packages, then TypeScript and webpack
# against the hub's JupyterLab as the core it runs in. Rebuilt only when its sources change; the wheel
# carries the result (labextension/dist, see setup.py), so no participant's machine builds anything.
LABEXT := labextension/dist/package.json
LABEXT_SOURCES := $(wildcard labextension/src/*.ts labextension/style/*) labextension/tsconfig.json labextension/install.json

labextension/node_modules/.installed: labextension/package.json labextension/package-lock.json
	cd labextension && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(LABEXT): labextension/node_modules/.installed $(LABEXT_SOURCES) | $(VENV)/.installed
	rm -rf labextension/dist labextension/lib
	cd labextension && node_modules/.bin/tsc && node node_modules/@jupyterlab/builder/lib/build-labextension.js \
	  --core-path "$$($(abspath $(BIN))/python -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))')" .

labextension: $(LABEXT)

# The hub's own environment holds the package as a link to the clone: it links the built bar too, so the
# demo's servers, which run the hub's Python in single-user mode, show it.
DEV_LABEXT := $(VENV)/share/jupyter/labextensions/wod-jupyterhub-sessionbar
$(DEV_LABEXT): $(LABEXT)
	mkdir -p $(dir $@) && ln -sfn $(CURDIR)/labextension/dist $@

# The students' Python: the hub's versions of jupyterhub, jupyterlab and ipykernel, readable by all.
$(STUDENT_VENV)/.installed: $(VENV)/.installed
	$(STUDENT_PYTHON) -m venv $(STUDENT_VENV)
	$(STUDENT_VENV)/bin/pip install -q --upgrade pip
	$(STUDENT_VENV)/bin/pip install -q $$($(BIN)/pip freeze | grep -iE '^(jupyterhub|jupyterlab|ipykernel)==')
	@$(call drop-unused,$(STUDENT_VENV)/bin/python)
	chmod -R a+rX $(STUDENT_VENV)
	touch $@

# ... and this package, built and installed (not linked to the clone: the server imports nothing a student
# could reach), for the session bar: its server extension and the prebuilt JupyterLab extension. Without its
# dependencies: what runs in a seat's server (wod_jupyterhub/lab) needs only jupyter_server, there already.
PACKAGE_SOURCES := setup.py setup.cfg MANIFEST.in $(shell find wod_jupyterhub share -type f ! -path '*/__pycache__/*' ! -name '*.pyc')
$(STUDENT_VENV)/.wod-installed: $(STUDENT_VENV)/.installed $(LABEXT) $(PACKAGE_SOURCES)
	$(STUDENT_VENV)/bin/pip install -q --no-deps --force-reinstall .
	chmod -R a+rX $(STUDENT_VENV)
	touch $@

# As root, the students' Python must sit where every account can reach it: a STUDENT_VENV chosen in a
# folder others cannot enter stops here, first, with what to do.
students-reach:
	@if [ "$$(id -u)" = 0 ]; then d="$(abspath $(STUDENT_VENV))"; while [ "$$d" != / ]; do d=$$(dirname "$$d"); \
	  if [ -d "$$d" ] && [ $$(( 0$$(stat -c %a "$$d") & 1 )) = 0 ]; then \
	    echo "make: the students' Python would go in $(STUDENT_VENV), which other accounts cannot reach ($$d is $$(stat -c %a "$$d")): run 'chmod o+x $$d', or set STUDENT_VENV to a folder every account can enter (e.g. make test STUDENT_VENV=/opt/wod-students)" >&2; exit 1; \
	  fi; done; fi

# As root, what system-users mode and its tests need: the students' Python, and cron and at
# (the tests show that `wod users create` refuses them to students). Not root: those tests skip.
system-users: deps
	@if [ "$$(id -u)" = 0 ]; then \
	  { command -v crontab && command -v at; } >/dev/null || { apt-get update -qq && $(APT_INSTALL) cron at >/dev/null; }; \
	  $(MAKE) --no-print-directory $(STUDENT_VENV)/.installed; \
	  $(call drop-unused,$(STUDENT_VENV)/bin/python); \
	  $(MAKE) --no-print-directory $(STUDENT_VENV)/.wod-installed; \
	else echo "system-users: not root; the system-users tests will be skipped"; fi

# Debian's Docker engine for the container runtime's tests (tests/dockerutil.py starts its own dockerd in
# namespaces of its own; the package's service is never started here) and debootstrap for the seats' image.
docker-tools:
	@if [ "$$(id -u)" = 0 ]; then \
	  { command -v dockerd && command -v containerd && command -v debootstrap; } >/dev/null || { \
	    apt-get update -qq && $(APT_INSTALL) --no-install-recommends docker.io debootstrap >/dev/null; }; \
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

# The tests that need neither a hub nor root nor a browser (the store's tests on PostgreSQL too), in parallel
# processes, a module's tests in one of them (its module fixtures are made once). The quick set is those less
# the ones marked slow, which run an outside tool's whole job (tests/conftest.py says which and why).
ALONE = not hub and not root and not browser
QUICK = $(ALONE) and not slow
# Compiled modules are kept even where the environment says not to write them: each pytest process
# otherwise rewrites every test module's asserts again, and every `wod` child compiles the package again.
PYTEST = PYTHONDONTWRITEBYTECODE= $(BIN)/pytest

# Processes of the runs that need no hub, root or browser: four on two cores, as their tests also wait (child
# processes, a directory server, timeouts) and the waits of one overlap another's CPU.
PROCESSES ?= 4

# Everything, in two runs: the tests that need no hub, root or browser (slow ones included) in $(PROCESSES)
# processes, then the rest (hubs, root, browsers: shared accounts, control groups and ports) one test at a
# time; both run, and either failing fails the target.
test: students-reach deps $(LABEXT) chromium lint system-users ldap-tools seat-image
	@export PATH="$(CURDIR)/node_modules/.bin:$$PATH" WOD_STUDENT_PYTHON="$(STUDENT_VENV)/bin/python"; rc=0; \
	$(PYTEST) -q -ra -n $(PROCESSES) --dist loadfile -m "$(ALONE)" $(PYTEST_ARGS) || rc=1; \
	$(PYTEST) -q -ra -m "not ($(ALONE))" $(PYTEST_ARGS) || rc=1; \
	exit $$rc

test-quick: deps
	$(PYTEST) -q -ra -n $(PROCESSES) --dist loadfile -m "$(QUICK)" $(PYTEST_ARGS)

# WOD_SYSTEM_USERS=1 make demo (as root): the accounts of the demo's range, every server as its student.
demo: $(if $(filter-out 0,$(WOD_SYSTEM_USERS)),students-reach) deps $(DEV_LABEXT) $(if $(filter-out 0,$(WOD_SYSTEM_USERS)),system-users)
	PATH="$(CURDIR)/node_modules/.bin:$$PATH" WOD_STUDENT_PYTHON="$(STUDENT_VENV)/bin/python" $(BIN)/python -m wod_jupyterhub.cli.demo

# Each benchmark runs as a module from the repository root, so it imports
# the test helpers as `tests.<module>` (see bench/__init__.py).
# Every bench runs, whatever an earlier one said; the ones that missed a goal or failed are named at the end.
bench: deps
	@PATH="$(CURDIR)/node_modules/.bin:$$PATH"; missed=""; for b in bench/[!_]*.py; do n=$$(basename $$b .py); echo "== bench.$$n"; 	  $(BIN)/python -m bench.$$n || missed="$$missed bench.$$n"; done; 	if [ -n "$$missed" ]; then echo "make bench: missed a goal or failed:$$missed" >&2; exit 1; fi

clean:
	rm -rf .cache $(VENV) $(STUDENT_VENV) node_modules labextension/node_modules labextension/lib labextension/dist students wod.sqlite* wod_secret.key jupyterhub.sqlite jupyterhub_cookie_secret
