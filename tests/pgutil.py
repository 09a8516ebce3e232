"""A real PostgreSQL server for tests: a fresh, uniquely named database per use (``WOD_TEST_POSTGRES``)."""

import os
import uuid

import pytest

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
    except Exception as e:  # any failure to reach the server decides alike
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required in CI: {e}")
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {e}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]

    def drop():
        with _pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{base}/{name}", drop
