"""Who holds a seat once its queued operations ran (``operations/holders.py``), table-driven, on SQLite and PostgreSQL.

The one rule the REST admission, the mail ingress and ``wod create`` ask; the
end-to-end behaviour it gives is in ``test_verb_rules.py``.
"""

import datetime
import uuid

import pytest

from tests.hubutil import write_workshop
from wod_jupyterhub.config import Wod
from wod_jupyterhub.service.operations.holders import holding, holding_create
from wod_jupyterhub.store.models import Operation, Seat, Status, Store, utcnow
from wod_jupyterhub.workshops.catalog import CatalogCache

PLAIN, KEEP = "WKSHP-Plain", "WKSHP-Keep"  # reset: false, reset: true
N = 3

# (the seat's row: state, customer, workshop or None), [queued operations: verb, customer, workshop] -> holding
CASES = {
    "never used": (None, [], ("free", None, None)),
    "active": (("active", "c1", PLAIN), [], ("active", "c1", PLAIN)),
    "its CREATE queued": (None, [("CREATE", "c2", KEEP)], ("active", "c2", KEEP)),
    "a CLEANUP of a reset: true workshop queued": (("active", "c1", KEEP), [("CLEANUP", "c1", None)], ("kept", "c1", KEEP)),
    "a CLEANUP queued": (("active", "c1", PLAIN), [("CLEANUP", "c1", None)], ("free", None, None)),
    "kept, its RESET queued": (("kept", "c1", KEEP), [("RESET", None, KEEP)], ("free", None, None)),
    "kept, another workshop's RESET queued": (("kept", "c1", KEEP), [("RESET", None, PLAIN)], ("kept", "c1", KEEP)),
    "a PURGE queued": (("active", "c1", PLAIN), [("PURGE", "c1", None)], ("free", None, None)),
    "a PASSWORD queued": (("active", "c1", PLAIN), [("PASSWORD", "c1", None)], ("active", "c1", PLAIN)),
    "a CLEANUP failed half-way": (("cleaning", "c1", PLAIN), [], ("cleaning", "c1", PLAIN)),
    "created, cleaned, created again": (
        None, [("CREATE", "c1", PLAIN), ("CLEANUP", "c1", None), ("CREATE", "c2", KEEP)], ("active", "c2", KEEP),
    ),  # fmt: skip
}


@pytest.fixture
def parts(db_url, tmp_path):
    root = tmp_path / "notebooks"
    write_workshop(root, PLAIN, (1, 9))
    write_workshop(root, KEEP, (1, 9), reset=True)
    wod = Wod(students_root=str(tmp_path / "students"), db_url=db_url, notebooks=[str(root)], skel="", student_max=50)
    store = Store(db_url)
    yield CatalogCache(wod), store
    store.dispose()


def operation(verb, customer, workshop, at, status=Status.QUEUED, student=N) -> Operation:
    return Operation(
        id=uuid.uuid4().hex, verb=verb, student=student, customer=customer, workshop=workshop, status=status,
        steps=[], result={}, created=at,
    )  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_holding_follows_the_seat_then_its_queued_operations(parts, case):
    catalog, store = parts
    row, queued, expected = CASES[case]
    start = utcnow()
    with store.session() as s:
        if row is not None:
            state, customer, workshop = row
            s.add(Seat(number=N, state=state, customer=customer, workshop=workshop, generation=0, sessions_ended=False))
        for i, (verb, customer, workshop) in enumerate(queued):
            s.add(operation(verb, customer, workshop, start + datetime.timedelta(milliseconds=i)))
    with store.engine.connect() as conn:
        got = holding(catalog, conn, N)
    assert (got.state, got.customer, got.workshop) == expected
    assert got.held == (expected[0] != "free")


def test_the_create_a_repeat_answers_is_the_queued_one_else_the_last_that_succeeded(parts):
    catalog, store = parts
    t = utcnow()
    old = operation("CREATE", "c1", PLAIN, t, Status.SUCCEEDED)
    mine = operation("CREATE", "c1", PLAIN, t + datetime.timedelta(seconds=1), Status.SUCCEEDED)
    other_seat = operation("CREATE", "c1", PLAIN, t + datetime.timedelta(seconds=2), Status.SUCCEEDED, student=N + 1)
    failed = operation("CREATE", "c1", PLAIN, t + datetime.timedelta(seconds=3), Status.FAILED)
    with store.session() as s:
        s.add(Seat(number=N, state="active", customer="c1", workshop=PLAIN, generation=0, sessions_ended=False))
        s.add_all([old, mine, other_seat, failed])
    with store.engine.connect() as conn:
        assert holding_create(conn, holding(catalog, conn, N)) == mine.id
    queued = operation("CREATE", "c1", PLAIN, t + datetime.timedelta(seconds=4))
    with store.session() as s:
        s.add(queued)
    with store.engine.connect() as conn:
        assert holding_create(conn, holding(catalog, conn, N)) == queued.id
