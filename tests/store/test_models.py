from sqlalchemy import inspect, select, text

from wod_jupyterhub.store.models import MIGRATIONS, VERSION_TABLE, Operation, Seat, Store, migrations_head, utcnow


def test_upgrade_creates_schema_and_is_idempotent(db_url):
    store = Store(db_url)
    store.upgrade()  # a second run (the hub and the service both start) changes nothing
    tables = set(inspect(store.engine).get_table_names())
    assert {"wod_students", "wod_operations", "wod_outbox", "wod_completions", "wod_throttle"} <= tables
    store.dispose()


def test_the_head_read_from_the_scripts_is_alembic_s():
    from alembic.script import ScriptDirectory

    assert migrations_head() == ScriptDirectory(str(MIGRATIONS)).get_current_head()


def test_a_store_at_an_older_revision_is_migrated_and_one_at_head_is_left_alone(db_url):
    """Opening a store skips Alembic only when the database is at the newest revision."""
    store = Store(db_url, upgrade=False)
    assert not store.at_head()  # an empty database
    store.upgrade()
    assert store.at_head()
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0005_seat_ends'"))
        conn.execute(text("DROP TABLE wod_step_results"))
    assert not store.at_head()
    store.dispose()
    again = Store(db_url)  # the newest migration runs again
    assert again.at_head()
    assert "wod_step_results" in inspect(again.engine).get_table_names()
    again.dispose()


def test_roundtrip_student_and_operation(db_url):
    store = Store(db_url)
    with store.session() as s:
        s.add(Seat(number=7, state="active", customer="825", workshop="WKSHP-Sample"))
        s.add(Operation(id="a" * 32, verb="CREATE", student=7, steps=[{"name": "render"}], status="queued"))
    st = store.student(7)
    assert (st.state, st.customer, st.generation, st.active) == ("active", "825", 0, True)
    with store.session() as s:
        op = s.scalars(select(Operation).where(Operation.student == 7)).one()
        assert op.steps == [{"name": "render"}]
        assert op.created <= utcnow()
    store.dispose()


def test_failed_session_rolls_back(db_url):
    store = Store(db_url)
    try:
        with store.session() as s:
            s.add(Seat(number=3))
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert store.student(3) is None
    store.dispose()


def test_the_migrations_build_exactly_the_models(db_url):
    """Alembic's own comparison: the migrated database and the ORM models agree, column by column."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from wod_jupyterhub.store.models import Base

    store = Store(db_url)
    with store.engine.connect() as conn:
        # Alembic's own bookkeeping table is not a model.
        opts = {"compare_type": True, "include_name": lambda name, kind, _: name != "wod_alembic_version"}
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)
    store.dispose()
    assert diff == [], diff


def test_a_seat_starts_with_its_sessions_not_known_ended(db_url):
    """Migration 0003: a seat of an older database, or a new row, makes its first CREATE ask the hub."""
    store = Store(db_url)
    with store.session() as s:
        s.add(Seat(number=3))
    assert store.student(3).sessions_ended is False
    store.dispose()
