"""Fixtures shared by the whole suite, and the markers it applies.

``db_url`` gives every test that asks for it a fresh, empty database, once
on SQLite and once on the real PostgreSQL server: for the tests whose subject
is the store (its rows, leases, queues and their concurrency). ``sqlite_url``
gives the others one, on SQLite only. Under CI (``CI=true``) a PostgreSQL that
cannot be reached fails the run instead of skipping.
``module_hubs`` and ``hubs`` are the one way a test starts a real hub;
``docker_engine`` the one way it gets a Docker engine (``tests/dockerutil.py``).

Markers (declared in pyproject.toml): a test that uses a hub fixture is marked ``hub``, one on
PostgreSQL ``postgres``, one that uses ``require_root`` ``root``; a test marked ``root`` is
skipped without root. ``make test-quick`` runs what is marked neither ``hub`` nor ``root``
nor ``browser`` nor ``slow``, and a hub started by a test not marked ``hub`` fails it.
``slow`` marks the few tests that run an outside tool's whole job (a wheel built from the
sdist, Ansible's template module, notebooks executed in real kernels), each costing more of
a core than whole modules of units. ``make test`` runs them with the other tests that need
no hub, in parallel.
"""

import contextlib
import os
from pathlib import Path

import pytest

from tests import dockerutil, hubutil
from tests.pgutil import pg_database

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "wod-notebooks"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'wod.sqlite'}"
        return
    url, drop = pg_database()
    yield url
    from sqlalchemy import create_engine  # noqa: F401 - engines of the test are gone by now

    drop()


@pytest.fixture
def sqlite_url(tmp_path):
    """A fresh SQLite database, for a test that needs the store but is not about it."""
    return f"sqlite:///{tmp_path / 'wod.sqlite'}"


@pytest.fixture
def corpus():
    if not CORPUS.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the public workshops are expected at {CORPUS}")
        pytest.skip(f"the public workshops are not at {CORPUS}")
    return CORPUS


@contextlib.contextmanager
def _hub_factory(folder_for):
    made = []

    def make(folder=None, **options) -> hubutil.RealHub:
        hub = hubutil.RealHub(folder if folder is not None else folder_for(), **options)
        made.append(hub)
        return hub

    try:
        yield make
    finally:
        for hub in made:
            hub.stop()


@pytest.fixture(scope="module")
def module_hubs(tmp_path_factory):
    """Real hubs a module's tests share: ``with module_hubs(folder, **RealHub options) as hub``; stopped after the module at the latest."""
    with _hub_factory(lambda: tmp_path_factory.mktemp("hub")) as make:
        yield make


@pytest.fixture
def hubs(tmp_path):
    """A real hub for one test, the same way: stopped when the test ends at the latest."""
    with _hub_factory(lambda: tmp_path / "hub") as make:
        yield make


@pytest.fixture(scope="session")
def docker_engine():
    """The session's own dockerd with the seats' image, started for the first test that needs it; skips (under CI fails) where it cannot run."""
    dockerutil.require_docker()
    engine = dockerutil.Dockerd().start()
    yield engine
    engine.stop()


HUB_FIXTURES = {"module_hubs", "hubs"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & HUB_FIXTURES:
            item.add_marker(pytest.mark.hub)
        if "require_root" in used:
            item.add_marker(pytest.mark.root)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("db_url") == "postgres":
            item.add_marker(pytest.mark.postgres)


def pytest_runtest_setup(item):
    root = item.get_closest_marker("root")
    if root is not None and os.geteuid() != 0:
        pytest.skip(root.kwargs.get("reason", "needs root (make test runs as root)"))
    hubutil.HUB_ALLOWED = item.get_closest_marker("hub") is not None


def pytest_runtest_teardown(item):
    hubutil.HUB_ALLOWED = None

