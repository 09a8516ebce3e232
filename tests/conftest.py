"""Fixtures shared by the whole suite.

``db_url`` gives every test that asks for it a fresh, empty database, once
on SQLite and once on the real PostgreSQL server. Under CI (``CI=true``) a
PostgreSQL that cannot be reached fails the run instead of skipping.
"""

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "wod-notebooks"
PG_ADMIN_URL = os.environ.get("WOD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_admin():
    import psycopg

    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)


def pg_database():
    """Create a uniquely named empty database; return (url, drop)."""
    name = "wod_test_" + uuid.uuid4().hex[:12]
    try:
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as e:  # noqa: BLE001 - any failure to reach the server decides alike
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required in CI: {e}")
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {e}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]

    def drop():
        with _pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{base}/{name}", drop


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
def corpus():
    if not CORPUS.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the public workshops are expected at {CORPUS}")
        pytest.skip(f"the public workshops are not at {CORPUS}")
    return CORPUS
