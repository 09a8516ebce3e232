"""The lease a free seat's preparation takes, on SQLite and PostgreSQL.

The hub side here is a stand-in whose calls wait on an event the test
sets: the point is the order of things while the preparation is inside its
hub calls, which a real hub answers too fast to catch. The real hub path of
the preparation is tested in tests/integration/test_service_api.py.
"""

import asyncio
import logging
import subprocess

import pytest

from wod_jupyterhub.config import Wod
from wod_jupyterhub.leases import _host
from wod_jupyterhub.service.operations import PREPARE, Engine, Preparer, SeatWork, WodOperations
from wod_jupyterhub.store.models import Operation, Seat, Store, utcnow
from wod_jupyterhub.workshops.catalog import CatalogCache


class GatedHub:
    """Answers like a hub with nothing to end, once the test opens the gate."""

    configured = True

    def __init__(self):
        self.gate = asyncio.Event()
        self.calls = []

    async def stop_server(self, name, timeout=60):
        self.calls.append(("stop", name))
        await self.gate.wait()
        return False

    async def revoke_tokens(self, name):
        self.calls.append(("revoke", name))
        return 0


class Parts:
    """An engine and its preparer on a real database; no hooks, renderer, sealer or portal (not used here)."""

    def __init__(self, db_url, tmp_path, hub=None):
        log = logging.getLogger("test")
        wod = Wod(students_root=str(tmp_path / "students"), db_url=db_url)
        settings = WodOperations()
        self.store = Store(db_url)
        work = SeatWork(
            wod, settings, catalog=CatalogCache(wod), hub=hub, hooks=None, renderer=None, sealer=None, outbox=None, log=log
        )
        self.engine = Engine(settings, self.store, work, log=log)
        self.preparer = Preparer(settings, self.store, work, self.engine, log=log)
        self.owner = self.engine.owner


def operations(db_url, tmp_path, hub=None) -> Parts:
    return Parts(db_url, tmp_path, hub)


def queue_create(store, n) -> Operation:
    with store.session() as s:
        op = Operation(id=f"{n:032d}", verb="CREATE", student=n, customer="c", status="queued", steps=[], result={}, created=utcnow())
        s.add(op)
    return op


async def test_a_create_waits_for_the_preparation_of_its_seat(db_url, tmp_path):
    hub = GatedHub()
    ops = operations(db_url, tmp_path, hub)
    try:
        preparing = asyncio.ensure_future(ops.preparer.end_sessions_ahead(4))
        while not hub.calls:
            await asyncio.sleep(0.01)
        # Inside the hub calls: the seat is leased, so a CREATE for it cannot be claimed yet.
        st = ops.store.student(4)
        assert st.lock_owner == f"{ops.owner}/{PREPARE}4" and not st.sessions_ended
        op = queue_create(ops.store, 4)
        assert ops.engine.claim(op.id, 4, 4, op.created) is None
        hub.gate.set()
        await preparing
        st = ops.store.student(4)
        assert st.lock_owner is None and st.sessions_ended is True
        assert hub.calls == [("stop", "student4"), ("revoke", "student4")]
        assert ops.engine.claim(op.id, 4, 4, op.created) is not None
    finally:
        ops.store.dispose()


async def test_a_seat_an_operation_holds_is_not_prepared(db_url, tmp_path):
    hub = GatedHub()
    hub.gate.set()
    ops = operations(db_url, tmp_path, hub)
    try:
        op = queue_create(ops.store, 5)
        with ops.store.session() as s:
            s.add(Seat(number=5, state="free"))
        assert ops.engine.claim(op.id, 5, 5, op.created) is not None
        await ops.preparer.end_sessions_ahead(5)
        assert hub.calls == [] and ops.store.student(5).sessions_ended is False
        assert ops.store.student(5).lock_owner == f"{ops.owner}/{op.id}"
    finally:
        ops.store.dispose()


def test_the_lease_of_a_process_killed_while_preparing_is_released(db_url, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    ops = operations(db_url, tmp_path)
    try:
        with ops.store.session() as s:
            s.add(Seat(number=6, state="free", lock_owner=f"{_host()}:{dead.pid}:1:dead/{PREPARE}6", lock_expires=utcnow()))
            s.add(Seat(number=7, state="free", lock_owner=f"{ops.owner}/{PREPARE}7", lock_expires=utcnow()))
        ops.engine.recover()
        assert ops.store.student(6).lock_owner is None  # its process is gone: at once, not after the lease
        assert ops.store.student(7).lock_owner == f"{ops.owner}/{PREPARE}7"  # ours, alive
    finally:
        ops.store.dispose()


async def test_a_seat_being_prepared_still_counts_as_pending(db_url, tmp_path):
    """api/health's prepare_pending reaches 0 only once the last seat is prepared, not when it is taken from the queue."""
    import time

    ops = operations(db_url, tmp_path)
    gate, inside = asyncio.Event(), asyncio.Event()

    async def prepare_seat(n):
        inside.set()
        await gate.wait()

    ops.preparer.prepare_seat = prepare_seat
    ops.preparer._hashes_wanted = lambda: 0  # passwords hashed ahead are another part of pending, not this test's
    ops.preparer._scan_at = time.monotonic() + 3600  # no full look during the test
    ops.preparer._queue[7] = None
    ops.preparer.start()
    try:
        await asyncio.wait_for(inside.wait(), 10)
        assert ops.preparer.pending == 1
        gate.set()
        for _ in range(100):
            if ops.preparer.pending == 0:
                break
            await asyncio.sleep(0.01)
        assert ops.preparer.pending == 0
    finally:
        await ops.preparer.stop()
        ops.store.dispose()


def test_seats_whose_hub_users_a_look_just_created_need_no_ending(db_url, tmp_path):
    ops = operations(db_url, tmp_path)
    try:
        with ops.store.session() as s:
            s.add(Seat(number=9, state="active", customer="c"))  # given meanwhile: its CREATE records what it did
            s.add(Seat(number=10, state="free", lock_owner="someone/else", lock_expires=utcnow()))  # an operation on it
        ops.preparer._sessions_ended_for_new_users({"student8", "student9", "student10", "admin"})
        assert ops.store.student(8).sessions_ended is True  # its row made too
        assert ops.store.student(9).sessions_ended is False
        assert ops.store.student(10).sessions_ended is False
    finally:
        ops.store.dispose()


@pytest.mark.parametrize("returning", [True, False], ids=["update-returning", "select-after"])
def test_a_claim_answers_the_operation_as_running_so_its_run_reads_nothing(db_url, tmp_path, returning):
    """With ``UPDATE … RETURNING`` (PostgreSQL, SQLite 3.35+) or, without it, a read in the claim's transaction."""
    ops = operations(db_url, tmp_path)
    try:
        ops.store.engine.dialect.update_returning = returning
        op = queue_create(ops.store, 11)
        with ops.store.session() as s:
            s.add(Seat(number=11, state="free"))
        before = utcnow()
        claimed = ops.engine.claim(op.id, 11, 11, op.created)
        assert (claimed.id, claimed.verb, claimed.student, claimed.customer) == (op.id, "CREATE", 11, "c")
        assert (claimed.status, claimed.owner) == ("running", ops.owner) and claimed.started >= before
        stored = ops.engine.read(op.id)
        assert (stored.status, stored.owner, stored.started) == ("running", ops.owner, claimed.started)
        assert ops.engine.claim(op.id, 11, 11, op.created) is None  # taken: not twice
    finally:
        ops.store.dispose()
