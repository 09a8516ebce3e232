"""A real PostgreSQL server for tests: an empty database per use (``WOD_TEST_POSTGRES``).

Each test process has one database of its own, made once; each use empties
it (every connection to it ended, its ``public`` schema made again), which
costs a few milliseconds where making and dropping a database costs most
of a second on a busy machine. Tests of one process run one after the
other, so no two uses ever share it; other processes have their own.
"""

import atexit
import os
import uuid

import pytest

PG_ADMIN_URL = os.environ.get("WOD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")

_name: str | None = None


def _connect(url):
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def _url(name: str) -> str:
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def _empty(name: str) -> None:
    """No connection to ``name`` left, and nothing in it: its ``public`` schema dropped and made again."""
    with _connect(PG_ADMIN_URL) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
    with _connect(_url(name)) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
        conn.execute("GRANT ALL ON SCHEMA public TO public")


def _drop(name: str) -> None:
    try:
        with _connect(PG_ADMIN_URL) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception:  # the server may be gone at exit: nothing left to clean then
        pass


def pg_database():
    """This process's database, empty; return (url, drop), ``drop`` emptying it again."""
    global _name
    try:
        if _name is None:
            name = "wod_test_" + uuid.uuid4().hex[:12]
            with _connect(PG_ADMIN_URL) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            _name = name
            atexit.register(_drop, name)
        _empty(_name)
    except Exception as e:  # any failure to reach the server decides alike
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required in CI: {e}")
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {e}")
    name = _name
    # A URL of its own per use (the name its connections show): whatever a process keeps per database URL
    # (an engine, a store already migrated) is never taken for this use's.
    return f"{_url(name)}?application_name=wod_test_{uuid.uuid4().hex[:8]}", lambda: _empty(name)
